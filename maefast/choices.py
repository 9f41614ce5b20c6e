"""The names a job's settings choose from, kept apart from what they name: the configs check values against
them and the command line offers them (`maefast embed --help`) before anything heavy is imported. The modules
that implement each choice take their names from here."""

PRECISIONS = ("auto", "bf16", "fp32", "fp8")  # fp8: bf16, and the GEMMs that pay in FP8 (maefast.models.fp8)
COMPILE_CHOICES = ("auto", True, False)
DEVICES = ("auto", "cpu", "cuda")
LOADER_BACKENDS = ("auto", "dali", "torch")
DALI_DEVICES = ("auto", "cpu", "gpu")  # where a DALI pipeline's stages run; auto: the loader's device

# attention kernels (maefast.ops.attention): maefast's Triton kernel, PyTorch's SDPA (its own choice of kernel,
# or pinned to one), FlashAttention 2 / 3 / 4 (backend name -> the module that provides it)
SDPA_KERNELS = ("cudnn", "flash", "efficient", "math")
FLASH_ATTENTION_MODULES = {"flash_attn": "flash_attn", "fa3": "flash_attn_interface", "fa4": "flash_attn.cute"}
ATTENTION_BACKENDS = ("triton", "sdpa", *SDPA_KERNELS, *FLASH_ATTENTION_MODULES)
ATTENTION_CHOICES = ("auto",) + ATTENTION_BACKENDS

# the layouts of a checkpoint's weights (maefast.models.checkpoint)
WEIGHTS_LAYOUTS = ("auto", "maefast", "timm", "reference")

# rows a benchmark can add beside a model's (maefast.embedding.baselines): kind -> its label in the tables
BASELINES = {"random": "random weights", "handcrafted": "hand-crafted features"}
