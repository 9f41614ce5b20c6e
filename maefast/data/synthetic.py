"""The synthetic screen: the built-in data set for demos and tests.

`synth_screen(out_dir, layout="rxrx"|"jump", ...)` writes plates of procedurally rendered sites
(maefast.data.render) in the chosen on-disk layout. Genes come from CORUM complexes (the CORUM_clusters
table of efaar-benchmarking, or a table you pass); all genes of one complex share a morphology shift, so
known relationships exist in the data. Compounds (optional) are tested at several concentrations; each
mimics the knockout of its target gene(s) with a strength that rises with the dose (a Hill curve), so the
drug-target benchmark has known answers (compound_targets.csv). Plates and experiments add batch effects;
control wells carry no perturbation. Deterministic by seed; each site is a pure function of (seed, site
number), so workers and resumption do not change the pixels. Files are written atomically; an interrupted run resumes.

`render_sites(n, channels, size, seed, dtype)` gives in-memory images for quick demos.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from maefast.data.render import FEATURES, BatchEffect, channel_names, render_site, render_sites
from maefast.data.workers import worker_processes
from maefast.errors import UserInputError
from maefast.io import atomic_path, read_json, write_json_atomic
from maefast.progress import Progress

__all__ = ["synth_screen", "render_sites", "design_screen", "design_compounds", "load_complexes", "write_png"]

CONTROL_LABEL = "EMPTY"
CONCENTRATIONS = (0.1, 1.0, 10.0)  # micromolar
DECOY_SHARE = 0.2  # compounds whose targets are not in the screen: a profile unlike any knockout's
ROWS, COLUMNS = "ABCDEFGHIJKLMNOP", 24  # a 384-well plate


def load_complexes(path=None) -> pd.DataFrame:
    """Complexes as (complex, genes): the CORUM_clusters.tsv of efaar-benchmarking unless `path` is given.

    The file is tab-separated: complex name, then the member gene symbols separated by spaces.
    """
    if path is None:
        from importlib import resources
        path = resources.files("efaar_benchmarking") / "benchmark_annotations" / "CORUM_clusters.tsv"
    table = pd.read_csv(path, sep="\t", header=None, names=["complex", "genes"])
    table["genes"] = table["genes"].str.split()
    return table


def design_compounds(genes: pd.DataFrame, num_compounds: int, concentrations=CONCENTRATIONS,
                     seed: int = 0) -> pd.DataFrame:
    """Compounds and their effect at each concentration: one row per (compound, concentration) with compound,
    concentration, targets (gene names separated by spaces; empty for a decoy), potency (the concentration of
    half the full effect) and the effect on each render.FEATURES column.

    A compound's full effect is the mean of its targets' knockout effects (1 target, or 2 for every third
    compound) plus a small off-target part; at concentration c it acts with strength c / (c + potency), the
    potency drawn log-uniformly between the lowest and highest concentration. A decoy (DECOY_SHARE of the
    compounds) has a random effect of the same size and no target in the screen."""
    if num_compounds < 0 or not concentrations or min(concentrations) <= 0:
        raise UserInputError(f"need num_compounds >= 0 and positive concentrations, got {num_compounds}, "
                             f"{list(concentrations)}")
    rng = np.random.default_rng([seed, 5])  # its own stream: the genes' design does not change
    effects = genes.set_index("gene")[list(FEATURES)]
    rows = []
    for k in range(num_compounds):
        decoy = k % round(1 / DECOY_SHARE) == round(1 / DECOY_SHARE) - 1
        targets = [] if decoy else list(rng.choice(effects.index, 1 + (k % 3 == 2), replace=False))
        typical = float(np.linalg.norm(effects.to_numpy(), axis=1).mean())
        full = (rng.normal(0, 1, len(FEATURES)) * typical / np.sqrt(len(FEATURES)) if decoy
                else effects.loc[targets].to_numpy().mean(0) + rng.normal(0, 0.05, len(FEATURES)))
        potency = float(np.exp(rng.uniform(np.log(min(concentrations)), np.log(max(concentrations)))))
        for concentration in concentrations:
            strength = concentration / (concentration + potency)
            rows.append(dict(compound=f"CMPD-{k + 1:03d}", concentration=float(concentration),
                             targets=" ".join(targets), potency=potency,
                             **dict(zip(FEATURES, strength * full))))
    return pd.DataFrame(rows, columns=["compound", "concentration", "targets", "potency", *FEATURES])


def compound_key(compound: str, concentration: float) -> str:
    return f"{compound}@{concentration:g}"


def design_screen(num_genes: int = 100, replicates: int = 2, num_plates: int = 4, num_experiments: int = 2,
                  controls_per_plate: int = 16, sites_per_well: int = 2, effect_size: float = 1.0,
                  complexes=None, seed: int = 0, num_compounds: int = 0,
                  concentrations=CONCENTRATIONS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The plate map: (sites, genes).

    genes: gene, complex, and the effect on each render.FEATURES column (complex direction shared by its
    members, plus a small gene-specific part). Genes are taken from disjoint CORUM complexes of 3 to 8
    members. sites: one row per site with experiment, plate, well, site, gene, well_type; with compounds
    (design_compounds), each compound and concentration has `replicates` wells like a gene, and the sites
    also have perturbation (the gene or compound), compound and concentration (empty for genes and controls).
    """
    if num_plates % num_experiments:
        raise UserInputError(f"num_plates ({num_plates}) must be a multiple of num_experiments ({num_experiments})")
    if replicates > num_plates:
        raise UserInputError(f"replicates ({replicates}) must not exceed num_plates ({num_plates}): one well per plate")
    treatments = num_genes + num_compounds * len(concentrations)
    wells_per_plate = -(-treatments * replicates // num_plates) + controls_per_plate
    if wells_per_plate > len(ROWS) * COLUMNS:
        raise UserInputError(f"{wells_per_plate} wells per plate do not fit a 384-well plate; add plates")
    rng = np.random.default_rng([seed, 1])
    genes = _pick_genes(load_complexes(complexes), num_genes, rng)
    directions = {c: rng.normal(0, 1, len(FEATURES)) for c in genes["complex"].unique()}
    effects = np.stack([effect_size * (directions[c] / np.linalg.norm(directions[c]) * 1.2
                                       + rng.normal(0, 0.15, len(FEATURES))) for c in genes["complex"]])
    genes = pd.concat([genes, pd.DataFrame(effects, columns=list(FEATURES))], axis=1)
    compounds = design_compounds(genes, num_compounds, concentrations, seed)
    # each gene (and compound at each concentration) gets `replicates` wells on distinct plates, spread evenly
    plate_lists = [[] for _ in range(num_plates)]
    start = 0
    for key in [*genes["gene"], *map(compound_key, compounds["compound"], compounds["concentration"])]:
        for r in range(replicates):
            plate_lists[(start + r) % num_plates].append(key)
        start = (start + replicates) % num_plates
    rows = []
    plates_per_experiment = num_plates // num_experiments
    for p, gene_list in enumerate(plate_lists):
        entries = gene_list + [CONTROL_LABEL] * controls_per_plate
        order = rng.permutation(len(ROWS) * COLUMNS)[:len(entries)]
        for key, position in zip(entries, sorted(order)):
            well = f"{ROWS[position // COLUMNS]}{position % COLUMNS + 1:02d}"
            compound, _, concentration = key.partition("@")
            for site in range(1, sites_per_well + 1):
                row = dict(experiment=f"SYN-{p // plates_per_experiment + 1:02d}",
                           plate=p % plates_per_experiment + 1, well=well, site=site,
                           gene=None if concentration else key,
                           well_type="negative_control" if key == CONTROL_LABEL else "treatment")
                if num_compounds:
                    row.update(perturbation=compound, compound=compound if concentration else None,
                               concentration=float(concentration) if concentration else np.nan)
                rows.append(row | dict(effect_key=key))
    return pd.DataFrame(rows), genes


def synth_screen(out_dir, layout: str = "rxrx", num_genes: int = 100, replicates: int = 2, num_plates: int = 4,
                 num_experiments: int = 2, controls_per_plate: int = 16, sites_per_well: int = 2,
                 size: int = 512, channels: int = 6, bit_depth: int | None = None, effect_size: float = 1.0,
                 batch_strength: float = 1.0, complexes=None, seed: int = 0, workers: int | None = None,
                 progress: bool = True, num_compounds: int = 0, concentrations=CONCENTRATIONS,
                 codec: str | None = None) -> Path:
    """Writes a synthetic screen to out_dir and returns out_dir (open it with open_dataset).

    layout "rxrx": {experiment}/Plate{p}/{well}_s{site}_w{k}.png + metadata.csv + channels.json.
    layout "jump": images/{experiment}/{plate}/{well}_s{site}_{channel}.tiff, one illumination function
    per plate and channel (illum/...npy, the plate's simulated illumination) and load_data.csv.
    layout "rxrx3-core": RxRx3-core's parquet shards of encoded channel images and metadata_rxrx3_core.csv
    (maefast.data.rxrx3_core), rendered through the rxrx layout.
    codec: the channel images' format, of CODECS[layout] (default the first): jump "tiff", "jpeg2000" (lossless
    .jp2) or "jpeg" (.jpg, quality 90, 8-bit); rxrx3-core "jpeg2000" (lossless, as published) or "png".
    bit_depth: 8 or 16 (default 8 for rxrx, 16 for jump). Also writes genes.csv (the ground truth:
    gene, complex, effect per feature) and synth.json (the parameters). With num_compounds, compounds are
    tested at `concentrations` (design_compounds) and compounds.csv (effect per compound and concentration)
    and compound_targets.csv (the known pairs: compound, gene) are written too.
    """
    if layout in CODECS and codec is not None and codec not in CODECS[layout]:
        raise UserInputError(f"codec must be one of {', '.join(CODECS[layout])} for the {layout} layout, got "
                             f"{codec!r}")
    if layout == "rxrx3-core":
        return _synth_rxrx3_core(out_dir, codec or CODECS[layout][0], dict(
            num_genes=num_genes, replicates=replicates, num_plates=num_plates, num_experiments=num_experiments,
            controls_per_plate=controls_per_plate, sites_per_well=sites_per_well, size=size, channels=channels,
            bit_depth=bit_depth, effect_size=effect_size, batch_strength=batch_strength, complexes=complexes,
            seed=seed, workers=workers, progress=progress, num_compounds=num_compounds,
            concentrations=concentrations))
    if layout not in ("rxrx", "jump"):
        raise UserInputError(f"layout must be 'rxrx', 'jump' or 'rxrx3-core', got {layout!r}")
    bit_depth = bit_depth or (8 if layout == "rxrx" else 16)
    if bit_depth not in (8, 16):
        raise UserInputError(f"bit_depth must be 8 or 16, got {bit_depth}")
    codecs = CODECS[layout]
    if codec == "jpeg" and bit_depth != 8:
        raise UserInputError("codec jpeg writes 8-bit images: pass bit_depth=8 (--bit-depth 8)")
    out = Path(out_dir)
    sites, genes = design_screen(num_genes, replicates, num_plates, num_experiments, controls_per_plate,
                                 sites_per_well, effect_size, complexes, seed, num_compounds, concentrations)
    compounds = design_compounds(genes, num_compounds, concentrations, seed)
    names = channel_names(channels)
    params = dict(layout=layout, num_genes=num_genes, replicates=replicates, num_plates=num_plates,
                  num_experiments=num_experiments, controls_per_plate=controls_per_plate,
                  sites_per_well=sites_per_well, size=size, channels=names, bit_depth=bit_depth,
                  effect_size=effect_size, batch_strength=batch_strength, seed=seed)
    if codec not in (None, codecs[0]):  # recorded when not the layout's own (screens written before it resume)
        params["codec"] = codec
    if num_compounds:  # recorded only when used: screens made before compounds existed resume unchanged
        params.update(num_compounds=num_compounds, concentrations=[float(c) for c in concentrations])
    previous = out / "synth.json"
    if previous.is_file() and read_json(previous) != params:
        raise UserInputError(f"{out} holds a synthetic screen made with other parameters ({previous}); "
                             "use a new folder")
    write_json_atomic(previous, params)
    effects = {g: row.to_numpy() for g, row in genes.set_index("gene")[list(FEATURES)].iterrows()}
    for row in compounds.itertuples():
        effects[compound_key(row.compound, row.concentration)] = np.array([getattr(row, f) for f in FEATURES])
    suffix = SUFFIXES[codec or codecs[0]]
    sites["files"] = [_site_files(out, layout, s, names, suffix) for s in sites.itertuples()]
    jobs = [(i, row.effect_key, row.experiment, row.plate, row.files) for i, row in enumerate(sites.itertuples())
            if not all(Path(f).is_file() for f in row.files)]
    sites = sites.drop(columns="effect_key")
    config = dict(seed=seed, size=size, channels=channels, dtype=np.uint8 if bit_depth == 8 else np.uint16,
                  batch_strength=batch_strength, effects=effects)
    _render_all(jobs, config, workers or min(2, os.cpu_count() or 1), progress, len(sites))
    _write_csv(genes, out / "genes.csv")
    if num_compounds:
        _write_csv(compounds, out / "compounds.csv")
        targets = [(row.compound, gene) for row in compounds.drop_duplicates("compound").itertuples()
                   for gene in row.targets.split()]
        _write_csv(pd.DataFrame(targets, columns=["compound", "gene"]), out / "compound_targets.csv")
    if layout == "rxrx":
        write_json_atomic(out / "channels.json", {f"w{k + 1}": n for k, n in enumerate(names)})
        _write_csv(sites.drop(columns="files"), out / "metadata.csv")
    else:
        _write_jump_tables(out, sites, names, config)
    return out


# each layout's channel image formats, the first its default
CODECS = {"rxrx": ("png",), "jump": ("tiff", "jpeg2000", "jpeg"), "rxrx3-core": ("jpeg2000", "png")}
SUFFIXES = {"png": ".png", "tiff": ".tiff", "jpeg2000": ".jp2", "jpeg": ".jpg"}


def _synth_rxrx3_core(out_dir, codec: str, options: dict) -> Path:
    """The screen rendered in the rxrx layout (in a hidden folder, removed when done), then written in the
    RxRx3-core layout with its ground-truth tables. A finished screen with the same parameters is kept."""
    import shutil

    from maefast.data.layouts import open_dataset
    from maefast.data.rxrx3_core import METADATA_FILE
    from maefast.data.rxrx3_core_write import write_rxrx3_core
    out = Path(out_dir)
    source = out / ".rxrx-source"
    params = {"layout": "rxrx3-core", "codec": codec, **{k: v for k, v in options.items()
                                                        if k not in ("workers", "progress", "complexes")}}
    params = json.loads(json.dumps(params))  # as it reads back (tuples become lists)
    if (out / "synth.json").is_file():
        if read_json(out / "synth.json") != params:
            raise UserInputError(f"{out} holds a synthetic screen made with other parameters "
                                 f"({out / 'synth.json'}); use a new folder")
        if (out / METADATA_FILE).is_file() and not source.exists():
            return out
    write_json_atomic(out / "synth.json", params)
    synth_screen(source, layout="rxrx", **options)
    write_rxrx3_core(open_dataset(source), out, codec)
    for name in ("genes.csv", "compounds.csv", "compound_targets.csv"):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    shutil.rmtree(source)
    return out


def _site_files(out: Path, layout: str, s, names: list[str], suffix: str) -> list[str]:
    if layout == "rxrx":
        folder = out / s.experiment / f"Plate{s.plate}"
        return [str(folder / f"{s.well}_s{s.site}_w{k + 1}{suffix}") for k in range(len(names))]
    folder = out / "images" / s.experiment / f"P{s.plate}"
    return [str(folder / f"{s.well}_s{s.site}_{name}{suffix}") for name in names]


def write_channel(path, channel: np.ndarray, suffix: str) -> None:
    """One channel image in the format of `suffix`: .png (maefast's writer), .tiff (tifffile), .jp2 (JPEG 2000,
    lossless) or .jpg (JPEG, quality 90), these two through Pillow."""
    if suffix == ".png":
        write_png(path, channel)
    elif suffix == ".tiff":
        import tifffile
        tifffile.imwrite(path, channel)
    else:
        from PIL import Image
        options = dict(format="JPEG2000", irreversible=False) if suffix == ".jp2" else dict(format="JPEG", quality=90)
        Image.fromarray(channel).save(path, **options)


def _plate_batch(seed: int, experiment: str, plate: int, channels: int, strength: float) -> BatchEffect:
    """Experiment-level and plate-level batch effects combined (same for every site of the plate)."""
    experiment_rng = np.random.default_rng([seed, 2, int(experiment.split("-")[1])])
    plate_rng = np.random.default_rng([seed, 3, int(experiment.split("-")[1]), plate])
    e = BatchEffect.random(experiment_rng, channels, strength)
    p = BatchEffect.random(plate_rng, channels, 0.5 * strength)
    return BatchEffect(gain=e.gain * p.gain, offset=e.offset + p.offset - 0.03,
                       tilt=(e.tilt[0] + p.tilt[0], e.tilt[1] + p.tilt[1]), vignette=e.vignette + p.vignette)


def _render_job(job, config) -> None:
    index, gene, experiment, plate, files = job
    rng = np.random.default_rng([config["seed"], 4, index])
    batch = _plate_batch(config["seed"], experiment, plate, config["channels"], config["batch_strength"])
    effect = config["effects"].get(gene)  # None for controls
    image = render_site(rng, config["size"], config["channels"], effect, batch, config["dtype"])
    for channel, path in zip(image, files):
        with atomic_path(path) as temporary:
            write_channel(temporary, channel, Path(path).suffix)


def _render_chunk(args) -> int:
    jobs, config = args
    for job in jobs:
        _render_job(job, config)
    return len(jobs)


def _render_all(jobs, config, workers: int, progress: bool, total: int) -> None:
    chunks = [jobs[i:i + 4] for i in range(0, len(jobs), 4)]
    workers = worker_processes(workers, "rendering the synthetic screen")
    if not jobs:
        if progress:
            print(f"synth: all {total} sites already written", flush=True)
        return
    if progress:
        resumed = f" ({total - len(jobs)} of {total} already written)" if len(jobs) < total else ""
        where = f"in {workers} processes" if workers else "in this process"
        sites = f"{len(jobs)} site{'s' * (len(jobs) != 1)}"
        print(f"synth: rendering {sites} of {config['size']} x {config['size']} px, {config['channels']} channels, "
              f"{where}{resumed}", flush=True)
    with Progress("synth", total, "sites", initial=total - len(jobs), bar=progress, silent=not progress) as shown:
        if not workers:
            for chunk in chunks:
                shown.update(_render_chunk((chunk, config)))
            return
        with ProcessPoolExecutor(workers) as pool:
            for count in pool.map(_render_chunk, [(chunk, config) for chunk in chunks]):
                shown.update(count)


def _write_jump_tables(out: Path, sites: pd.DataFrame, names: list[str], config) -> None:
    table = pd.DataFrame({"Metadata_Source": "synthetic", "Metadata_Batch": sites["experiment"],
                          "Metadata_Plate": sites["experiment"] + "_P" + sites["plate"].astype(str),
                          "Metadata_Well": sites["well"], "Metadata_Site": sites["site"],
                          "Metadata_Symbol": sites["gene"],
                          "Metadata_pert_type": np.where(sites["gene"] == CONTROL_LABEL, "control", "trt")})
    if "compound" in sites.columns:  # compounds: the perturbation column names genes and compounds alike
        table.insert(5, "Metadata_Perturbation", sites["perturbation"])
        table["Metadata_Compound"], table["Metadata_Concentration"] = sites["compound"], sites["concentration"]
    for k, name in enumerate(names):
        files = sites["files"].map(lambda f, k=k: Path(f[k]))
        table[f"FileName_Orig{name}"] = files.map(lambda p: p.name)
        table[f"PathName_Orig{name}"] = files.map(lambda p: str(p.parent.relative_to(out)))
        table[f"FileName_Illum{name}"] = table["Metadata_Plate"] + f"_Illum{name}.npy"
        table[f"PathName_Illum{name}"] = "illum"
    for (experiment, plate), _ in sites.groupby(["experiment", "plate"]):
        field = _plate_batch(config["seed"], experiment, plate, config["channels"], config["batch_strength"])
        illumination = field.illumination(config["size"])
        for name in names:
            with atomic_path(out / "illum" / f"{experiment}_P{plate}_Illum{name}.npy") as temporary:
                with open(temporary, "wb") as handle:
                    np.save(handle, illumination)
    _write_csv(table, out / "load_data.csv")


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def write_png(path, image: np.ndarray, level: int = 1) -> None:
    """A grayscale 8- or 16-bit PNG (no row filters, zlib `level`): faster to write than Pillow's encoder."""
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise UserInputError(f"write_png: expected a 2-D uint8/uint16 array, got {image.dtype} {image.shape}")
    height, width = image.shape
    rows = image.astype(">u2") if image.dtype == np.uint16 else image
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows.view(np.uint8).reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, image.dtype.itemsize * 8, 0, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b""))


def _pick_genes(complexes: pd.DataFrame, num_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    """num_genes genes from disjoint complexes of 3 to 8 members, complexes in random order."""
    if num_genes < 1:
        raise UserInputError(f"num_genes must be at least 1, got {num_genes}")
    sizes = complexes["genes"].map(len)
    candidates = complexes[(sizes >= 3) & (sizes <= 8)]
    used, rows = set(), []
    for position in rng.permutation(len(candidates)):
        name, members = candidates.iloc[position]["complex"], candidates.iloc[position]["genes"]
        if used.intersection(members) or len(set(members)) != len(members):
            continue
        members = members[:num_genes - len(rows)]
        used.update(members)
        rows += [dict(gene=g, complex=name) for g in members]
        if len(rows) == num_genes:
            return pd.DataFrame(rows)
    raise UserInputError(f"num_genes={num_genes}: the complexes table has only {len(rows)} genes in disjoint "
                         "complexes of 3 to 8 members")
