"""Orbax checkpoints of the train state together with the data iterator position.

Layout of `MODEL_DIR` (a local path or `gs://...`), one orbax step directory per step::

    MODEL_DIR/
      20/
        _CHECKPOINT_METADATA        # orbax step metadata; `commit_timestamp_nsecs` set on commit
        commit_success.txt          # written by orbax on commit
        state/                      # the train-state pytree (orbax PyTree/OCDBT format)
        data/process_0_of_1.index   # tf.train.Checkpoint of process 0's tf.data iterator
        data/process_0_of_1.data-00000-of-00001
        tokens/tokens.json          # the run's cumulative token counts at this step (process 0 writes it)
      30.orbax-checkpoint-tmp-.../  # a save in progress (or killed): never used

Why the data iterator lives inside the orbax step: a run resumes from exactly one
step, so parameters, optimizer state and the input position must be committed
together. Orbax commits a step as a whole (atomic rename of the step directory on
local/POSIX file systems, a `commit_success.txt` file on GCS), after every item of
the composite checkpoint has been written, so the data item is covered by the same
commit as the state.

Completeness (see `is_complete_step_dir`): a step counts only when orbax considers its
directory finalized, its `_CHECKPOINT_METADATA` parses and carries a commit timestamp,
every item listed there exists (finalized) and `state` is one of them, and a `data`
item holds one iterator checkpoint per saving process, and a `tokens` item holds its
JSON file. Steps without a `tokens` item (an `import-hf` step 0, a checkpoint written before
token accounting) are complete too: their counts are unknown (`read_token_counts` -> None).
The orbax manager is given a
step-name format that applies the same test, so orbax's own step list, garbage
collection (`max_to_keep`) and restore never see a half-written step either.
"""

from __future__ import annotations

import os

import dataclasses
import errno
import hashlib
import json
import logging
import re
from typing import Any, Iterator, Protocol

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

STATE_ITEM = "state"
DATA_ITEM = "data"
# The run's cumulative token counts at the step (`slm_jax.training.metrics.TokenCounter`), one JSON
# object: {"counts": {metrics.jsonl tokens/* key: int}, "data_task_ids": bool, ...}.
TOKENS_ITEM = "tokens"
TOKENS_FILE = "tokens.json"
# orbax writes this file in every step directory (orbax/_src/metadata/checkpoint.py).
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
# ... and this one last, just before the commit rename (orbax/_src/path/atomicity.py).
COMMIT_SUCCESS_FILE = "commit_success.txt"
_DATA_INDEX_RE = re.compile(r"^process_(\d+)_of_(\d+)\.index$")


class CheckpointWriteError(RuntimeError):
    """Writing the checkpoint of a step failed (full disk, quota, permissions, I/O error).

    Attributes: `step` (the step whose save failed), `directory` (the checkpoints folder),
    `model_dir` (its MODEL_DIR: the parent of a `checkpoints/` folder), `reason` (one line,
    e.g. "[Errno 28] No space left on device (ENOSPC)") and `resume_step` (the last complete
    checkpoint, which a rerun resumes from exactly; None when there is none yet). The step
    that failed is never counted as a checkpoint (see `is_complete_step_dir`).
    """

    def __init__(self, step: int, directory: str, reason: str, resume_step: int | None):
        self.step, self.directory, self.reason, self.resume_step = step, str(directory), reason, resume_step
        path = epath.Path(self.directory)
        self.model_dir = str(path.parent) if path.name == "checkpoints" else self.directory
        resume = (f"a rerun resumes from step {resume_step}, the last complete checkpoint"
                  if resume_step is not None else "no complete checkpoint yet: a rerun starts from step 0")
        super().__init__(f"checkpoint of step {step} not written: {reason}; MODEL_DIR {self.model_dir}; {resume}")


# Messages of write failures that arrive without an OSError (TensorFlow / tensorstore errors).
_IO_FAILURE_TEXT = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                    "Permission denied", "Input/output error", "ENOSPC", "EDQUOT", "EROFS", "EACCES")


def _io_failure_reason(err: BaseException) -> str | None:
    """One line saying why a write failed, when `err` (or what caused it) is an I/O failure:
    an OSError, a TensorFlow error, or a message naming an I/O errno; None otherwise."""
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            name = errno.errorcode.get(current.errno, str(current.errno))
            where = f" ({current.filename})" if current.filename else ""
            return f"[Errno {current.errno}] {os.strerror(current.errno)} ({name}){where}"
        text = str(current).strip()
        if isinstance(current, OSError) or type(current).__module__.startswith("tensorflow") \
                or any(t in text for t in _IO_FAILURE_TEXT):
            line = next((ln for ln in text.splitlines() if any(t in ln for t in _IO_FAILURE_TEXT)),
                        text.splitlines()[0] if text else type(current).__name__)
            return f"{type(current).__name__}: {line.strip()}"
        current = current.__cause__ or current.__context__
    return None


def _drop_orbax_io_failure_logs(record: logging.LogRecord) -> bool:
    """Drops orbax's own ERROR records (with a traceback) of a save thread that failed on an
    I/O error: CheckpointManager raises CheckpointWriteError for it, with the cause chained."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and "orbax" in (record.pathname or "") and _io_failure_reason(exc) is not None)


class DataIterator(Protocol):
    """What the manager needs from a data iterator: write/read its position."""

    def save(self, path: str) -> None: ...

    def restore(self, path: str) -> None: ...


def data_file_prefix(process_index: int, process_count: int) -> str:
    """The file prefix (inside the `data` item) of one process's iterator state."""
    return f"process_{process_index}_of_{process_count}"


# --------------------------------------------------------------------------------------
# The data-iterator item: a synchronous orbax CheckpointHandler.
# --------------------------------------------------------------------------------------


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves/restores each process's data iterator under `data/process_{i}_of_{n}`.

    It is deliberately a plain (synchronous) `CheckpointHandler`: orbax's composite
    handler runs such items in the blocking part of `save`, so the iterator position
    is on disk before `save` returns and the training loop may advance it at once.
    The step is committed only later, with the (possibly asynchronous) state item.
    """

    def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        prefix = directory / data_file_prefix(jax.process_index(), jax.process_count())
        args.iterator.save(str(prefix))

    def restore(self, directory: epath.Path, args: "DataIteratorRestore") -> Any:
        directory = epath.Path(directory)
        counts = _data_process_counts(directory)
        n = jax.process_count()
        if not counts:
            raise FileNotFoundError(f"No data iterator state found in {directory}.")
        if counts != {n}:
            raise ValueError(
                f"The data iterator state in {directory} was saved by "
                f"{sorted(counts)} process(es), but this job runs {n} process(es); "
                "the input position cannot be restored across a different process "
                "count. Resume with the same number of processes, or restore with "
                "data_iterator=None to restart the input pipeline from its beginning."
            )
        prefix = directory / data_file_prefix(jax.process_index(), n)
        args.iterator.restore(str(prefix))
        return args.iterator

    def metadata(self, directory: epath.Path) -> Any:
        return None


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    iterator: Any


def _data_process_counts(data_dir: epath.Path) -> set[int]:
    """Process counts named by the iterator files in `data_dir` (normally one)."""
    counts = set()
    for p in data_dir.iterdir():
        m = _DATA_INDEX_RE.match(p.name)
        if m:
            counts.add(int(m.group(2)))
    return counts


def _data_item_complete(data_dir: epath.Path) -> bool:
    """True if `data_dir` holds the iterator state of every process of one run."""
    seen: dict[int, set[int]] = {}
    for p in data_dir.iterdir():
        m = _DATA_INDEX_RE.match(p.name)
        if m:
            seen.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    return len(seen) == 1 and all(idx == set(range(n)) for n, idx in seen.items())


# --------------------------------------------------------------------------------------
# Completeness.
# --------------------------------------------------------------------------------------


def _read_step_metadata(step_dir: epath.Path) -> dict | None:
    try:
        return json.loads((step_dir / STEP_METADATA_FILE).read_text())
    except (FileNotFoundError, OSError, ValueError):
        return None


def is_complete_step_dir(step_dir: epath.PathLike) -> bool:
    """Whether `step_dir` is a fully committed checkpoint that may be restored.

    All must hold:
      * orbax considers the directory finalized: on local/POSIX file systems its name
        has no `.orbax-checkpoint-tmp` suffix (orbax renames the tmp directory on
        commit); on GCS it contains `commit_success.txt`;
      * `_CHECKPOINT_METADATA` parses and has `commit_timestamp_nsecs`, and
        `commit_success.txt` exists: orbax (0.12.8) writes both, in that order, in
        the commit step after every item was written, on every file system;
      * every item named in that metadata's `item_handlers` exists as a finalized
        directory, and `state` is one of them;
      * a `data` item holds `process_{i}_of_{n}.index` for every i < n;
      * a `tokens` item holds `tokens.json`.
    A directory copied, truncated or left by a kill mid-save fails one of these.
    """
    step_dir = epath.Path(step_dir)
    try:
        if not step_dir.is_dir() or not ocp.step.is_path_finalized(step_dir):
            return False
        meta = _read_step_metadata(step_dir)
        if not isinstance(meta, dict) or meta.get("commit_timestamp_nsecs") is None:
            return False
        if not (step_dir / COMMIT_SUCCESS_FILE).exists():
            return False
        items = meta.get("item_handlers")
        if not isinstance(items, dict) or STATE_ITEM not in items:
            return False
        for name in items:
            item_dir = step_dir / name
            if not item_dir.is_dir() or not ocp.step.is_path_finalized(item_dir):
                return False
        if DATA_ITEM in items and not _data_item_complete(step_dir / DATA_ITEM):
            return False
        if TOKENS_ITEM in items and not (step_dir / TOKENS_ITEM / TOKENS_FILE).exists():
            return False
        return True
    except OSError as e:  # unreadable (e.g. deleted while listing): not usable
        log.warning("Ignoring checkpoint %s: %s", step_dir, e)
        return False


def list_complete_steps(directory: epath.PathLike) -> list[int]:
    """Steps (ascending) of the complete checkpoints in `directory`; [] if none."""
    directory = _absolute(directory)
    if not directory.exists():
        return []
    steps = []
    for p in directory.iterdir():
        if p.name.isdigit() and is_complete_step_dir(p):
            steps.append(int(p.name))
    return sorted(steps)


@dataclasses.dataclass(frozen=True)
class _CompleteStepNameFormat(ocp.step.NameFormat):
    """orbax's standard step names (`<step>`), but only complete steps are found.

    Handed to orbax so that its step cache, `max_to_keep` garbage collection and
    restore use the same notion of completeness as `list_complete_steps`.
    """

    base: Any = dataclasses.field(default_factory=ocp.step.standard_name_format)

    def build_name(self, step: int) -> str:
        return self.base.build_name(step)

    def find_all(self, base_path: epath.PathLike) -> Iterator[ocp.step.Metadata]:
        for m in self.base.find_all(base_path):
            if is_complete_step_dir(m.path):
                yield m

    def find_step(self, base_path: epath.PathLike, step: int) -> ocp.step.Metadata:
        m = self.base.find_step(base_path, step)
        if not is_complete_step_dir(m.path):
            raise ValueError(f"Checkpoint {m.path} (step {step}) is incomplete.")
        return m


_NAME_FORMAT = _CompleteStepNameFormat()


def _step_dir(directory: epath.PathLike, step: int) -> epath.Path:
    return _absolute(directory) / _NAME_FORMAT.build_name(step)


def _resolve_step(directory: epath.PathLike, step: int | None) -> int:
    """`step`, or the latest complete one; errors name the directory and step."""
    steps = list_complete_steps(directory)
    if not steps:
        raise FileNotFoundError(f"No complete checkpoint found in {directory}.")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(
            f"No complete checkpoint for step {step} in {directory}; complete steps: "
            f"{steps}."
        )
    return step


# --------------------------------------------------------------------------------------
# The manager.
# --------------------------------------------------------------------------------------


def _absolute(directory) -> epath.Path:
    """Orbax (tensorstore) needs absolute local paths; URLs such as gs:// pass through."""
    text = str(directory)
    if "://" in text:
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


class CheckpointManager:
    """Saves/restores the train state and data iterator position under `directory`.

    A thin wrapper over `orbax.checkpoint.CheckpointManager` with three items: `state`
    (any pytree of `jax.Array`, e.g. `{'step', 'params', 'opt_state'}`, saved with
    `StandardSave`, asynchronously when `async_save`), `data` (the iterator,
    written synchronously before `save` returns) and `tokens` (a JSON object, optional).
    Only complete steps are ever listed or restored (see `is_complete_step_dir`).
    """

    def __init__(
        self,
        directory: str,
        *,
        save_period: int,
        max_to_keep: int | None = 3,
        async_save: bool = True,
    ):
        if save_period <= 0:
            raise ValueError(f"save_period must be positive, got {save_period}.")
        if max_to_keep is not None and max_to_keep <= 0:
            raise ValueError(f"max_to_keep must be positive or None, got {max_to_keep}.")
        self.directory = _absolute(directory)
        self.save_period = save_period
        self._pending_step: int | None = None
        self._failed = False
        logging.getLogger("absl").addFilter(_drop_orbax_io_failure_logs)  # orbax logs through absl; idempotent
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            step_name_format=_NAME_FORMAT,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE_ITEM: ocp.StandardCheckpointHandler(),
                DATA_ITEM: DataIteratorHandler(),
                TOKENS_ITEM: ocp.JsonCheckpointHandler(filename=TOKENS_FILE),
            },
        )

    # -- queries ------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Complete checkpoints on disk, ascending (excludes a save still in flight)."""
        return list_complete_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step % self.save_period == 0

    # -- save / restore -----------------------------------------------------------

    def save(self, step: int, state, data_iterator: DataIterator | None = None, *,
             force: bool = False, tokens: dict | None = None) -> bool:
        """Saves `state` (and the iterator position, and `tokens`: a JSON-able dict, the
        `tokens` item, identical on every process: process 0 writes it) as step `step`.

        Off-period steps are skipped unless `force` (used for the final step). A step
        that is already saved (or being saved) is skipped too, so a forced final
        save on a periodic step is harmless. Returns whether a save was started.
        When this returns, the iterator state is on disk and `state`'s arrays may be
        donated or overwritten; the step becomes complete once the async write
        commits (`wait_until_finished`).
        """
        if not force and not self.should_save(step):
            return False
        if step in self._manager.all_steps():  # complete, or in flight from this manager
            log.info("Checkpoint for step %d already exists in %s; not saving again.",
                     step, self.directory)
            return False
        self._finish_pending()  # orbax waits for the previous save here anyway; errors name its step
        items = {STATE_ITEM: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA_ITEM] = DataIteratorSave(data_iterator)
        if tokens is not None:
            items[TOKENS_ITEM] = ocp.args.JsonSave(json.loads(json.dumps(tokens)))
        # force=True for orbax: our own period policy already decided. A leftover
        # incomplete directory for this step is replaced by orbax's save.
        try:
            started = bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))
        except Exception as err:  # noqa: BLE001 - only I/O failures are translated, others re-raised
            self._raise_write_error(step, err)
        if started:
            self._pending_step = step
        return started

    def _finish_pending(self) -> None:
        """Waits for the in-flight save; CheckpointWriteError naming its step if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - only I/O failures are translated, others re-raised
            self._raise_write_error(self._pending_step, err)
        self._pending_step = None

    def _raise_write_error(self, step: int | None, err: Exception):
        reason = _io_failure_reason(err)
        if reason is None:
            raise err
        self._failed = True
        log.debug("checkpoint write failure", exc_info=err)
        raise CheckpointWriteError(step if step is not None else -1, str(self.directory), reason,
                                   self.latest_step()) from err

    def has_data_state(self, step: int) -> bool:
        """Whether step `step` saved a data iterator position (an `import-hf` step 0 has none)."""
        return has_data_item(self.directory, step)

    def token_counts(self, step: int) -> dict | None:
        """The `tokens` item of step `step` (`read_token_counts`), None when it has none."""
        self.wait_until_finished()
        return read_token_counts(self.directory, step)

    def restore(self, abstract_state, step: int | None = None,
                data_iterator: DataIterator | None = None):
        """Restores step `step` (default: latest complete) and returns the state.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` whose `sharding`s say
        where each restored array goes; the checkpoint may have been written with a
        different mesh or device count. If `data_iterator` is given its position is
        restored in place; pass None to leave the input pipeline alone.
        """
        self.wait_until_finished()  # so "latest" includes this manager's own saves
        step = _resolve_step(self.directory, step)
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            if not (_step_dir(self.directory, step) / DATA_ITEM).exists():
                raise FileNotFoundError(
                    f"Checkpoint {_step_dir(self.directory, step)} has no data iterator "
                    "state; restore with data_iterator=None to skip it."
                )
            items[DATA_ITEM] = DataIteratorRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE_ITEM]

    def wait_until_finished(self) -> None:
        """Blocks until any in-flight async save has committed; CheckpointWriteError (naming
        the step, the reason and the step a rerun resumes from) if writing it failed."""
        self._finish_pending()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources. After a reported
        CheckpointWriteError it does not raise again (the first error is the one to show)."""
        try:
            self._finish_pending()
        except Exception:  # noqa: BLE001
            if not self._failed:
                raise
            log.debug("ignored while closing after a checkpoint write failure", exc_info=True)
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001
                if not self._failed:
                    raise

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Model-free helpers (for `slm-jax inspect`).
# --------------------------------------------------------------------------------------


def params_sha256(params) -> str:
    """Hex sha256 identifying a params pytree exactly (compares runs bit for bit).

    Definition: leaves are taken with `jax.tree_util.tree_flatten_with_path` and
    ordered by their key path string `p = jax.tree_util.keystr(path)`. For each leaf
    `x`, in that order, the hash is updated with
        (p + "\\0" + str(a.shape) + "\\0").encode("utf-8"), then a.tobytes()
    where `a = np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))`.
    So renaming, reshaping or changing any value changes the hash; dtype does not
    (bf16 and its exact f32 upcast hash alike). Leaves must be fully addressable
    from this process (e.g. the host arrays of `restore_params_to_host`).
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    keyed = sorted(((jax.tree_util.keystr(path), x) for path, x in flat),
                   key=lambda kv: kv[0])
    h = hashlib.sha256()
    for key, x in keyed:
        a = np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))
        h.update(f"{key}\0{a.shape}\0".encode("utf-8"))
        h.update(a.tobytes())
    return h.hexdigest()


def has_data_item(directory: epath.PathLike, step: int) -> bool:
    """Whether step `step` in `directory` saved a data iterator position (an `import-hf` step 0 has none)."""
    return (_step_dir(directory, step) / DATA_ITEM).exists()


def read_token_counts(directory: epath.PathLike, step: int | None = None) -> dict | None:
    """The `tokens` item (a dict, see `TOKENS_ITEM`) of complete step `step` (default: the
    latest) in `directory`; None when that step has none (an `import-hf` step 0, a checkpoint
    written before token accounting). FileNotFoundError naming `directory` when there is no
    such complete step; ValueError naming the file when it is not a JSON object."""
    step = _resolve_step(directory, step)
    path = _step_dir(directory, step) / TOKENS_ITEM / TOKENS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def restore_params_to_host(directory: str, step: int | None = None) -> tuple[int, dict]:
    """Reads the `params` subtree of a checkpoint as host numpy arrays.

    Needs no model: the restore target is built from the checkpoint's own metadata,
    and only `params` is read (not the optimizer state). Returns (step, params);
    `step` defaults to the latest complete checkpoint. Raises FileNotFoundError
    naming `directory` if there is no complete checkpoint (for that step).
    """
    step = _resolve_step(directory, step)
    state_dir = _step_dir(directory, step) / STATE_ITEM
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(state_dir).tree
        if not isinstance(tree, dict) or "params" not in tree:
            keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise KeyError(f"Checkpoint {state_dir} has no 'params' entry (has {keys}).")
        item = {"params": tree["params"]}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = handler.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                        partial_restore=True),
        )
    finally:
        handler.close()
    return step, restored["params"]


def restore_params_sharded(directory: str, abstract_params, step: int | None = None) -> tuple[int, dict]:
    """Reads only the `params` subtree of a checkpoint straight into the shardings of
    `abstract_params` (a pytree of `jax.ShapeDtypeStruct` with `.sharding`, e.g.
    `Trainer.abstract_state["params"]`), without the optimizer state. Returns (step, params).
    FileNotFoundError naming `directory` if there is no complete checkpoint (for that step).
    """
    step = _resolve_step(directory, step)
    state_dir = _step_dir(directory, step) / STATE_ITEM
    item = {"params": abstract_params}
    handler = ocp.PyTreeCheckpointHandler()
    try:
        restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    finally:
        handler.close()
    return step, restored["params"]
