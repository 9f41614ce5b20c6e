"""Imported only by multiprocessing's forkserver process, before it forks loader workers
(maefast.data.workers.start_guarded_workers): the forkserver dies with the job that started it."""
from maefast.data.workers import die_with_parent

die_with_parent()
