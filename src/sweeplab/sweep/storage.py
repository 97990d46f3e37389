"""Where a sweep's Ray experiment lives: a local folder, or a URI (s3://, gs://, file://, ...) that pyarrow
opens, as Ray itself does. A URI is joined with "/" and never passed through ``Path`` (which would turn
``s3://b/ray`` into ``s3:/b/ray``)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from sweeplab.errors import ConfigError

if TYPE_CHECKING:
    from sweeplab.sweep.plan import SweepPlan

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# How pyarrow (driver and Ray workers alike) finds an S3-compatible endpoint: forwarded to the workers.
# Credentials are not: they come from each node's own environment (a Kubernetes Secret, an instance role).
ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


def is_uri(path: str) -> bool:
    """``s3://b/ray``, ``file:///x``: a filesystem URI, not a local path."""
    return bool(_SCHEME.match(path))


def absolute_location(location: str) -> str:
    """A store's location (a folder, a journal file, ``sqlite:///file``) given relative to the current folder, made
    absolute, for a command that may run from another one; a URI of a server or bucket unchanged."""
    if location.startswith("sqlite:///") and not location.startswith("sqlite:////"):
        return f"sqlite:///{Path(location[len('sqlite:///'):]).expanduser().resolve()}"
    return location if ":" in location.split("/", 1)[0] else str(Path(location).expanduser().resolve())


def storage_root(configured: str | None, output_dir: Path) -> str:
    """Ray's storage_path for a sweep: cluster.storage_path as a URI unchanged, as a local path made
    absolute; by default <output_dir>/ray."""
    if not configured:
        return str(output_dir / "ray")
    return configured.rstrip("/") if is_uri(configured) else absolute_location(configured)


def ray_root(plan: SweepPlan) -> str:
    """A planned sweep's ``storage_root``."""
    return storage_root(plan.cfg.cluster.storage_path, plan.output_dir)


def experiment_path(root: str, sweep_id: str) -> str:
    """The sweep's Ray experiment under ``storage_root`` (what ``Tuner.restore`` and ``ExperimentAnalysis`` open);
    a URI's query (``s3://b/x?endpoint_override=host:9000&scheme=http``, as pyarrow takes it) stays at its end."""
    if not is_uri(root):
        return str(Path(root) / sweep_id)
    if "?" not in root:
        return f"{root}/{sweep_id}"
    parts = urlsplit(root)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{sweep_id}"))


def check_storage(root: str) -> None:
    """Open (and create) the storage root before any trial starts: an unknown scheme, a missing bucket or
    an unreachable endpoint is a one-line error naming cluster.storage_path, not a trial's traceback."""
    import pyarrow.fs

    try:
        if is_uri(root):
            filesystem, path = pyarrow.fs.FileSystem.from_uri(root)
        else:
            filesystem, path = pyarrow.fs.LocalFileSystem(), root
        filesystem.create_dir(path, recursive=True)
    except (OSError, ValueError, pyarrow.ArrowException) as err:
        raise ConfigError(f"cluster.storage_path={root} cannot be opened: {str(err).splitlines()[0][:300]}; "
                          "give a local folder or a URI pyarrow reaches (s3://bucket/path with AWS_* "
                          "credentials and AWS_ENDPOINT_URL for S3-compatible stores, gs://, file:///abs/path)"
                          ) from None


def endpoint_env() -> dict[str, str]:
    """The storage endpoint settings of this process, for the Ray workers' runtime environment."""
    return {key: os.environ[key] for key in ENDPOINT_ENV if key in os.environ}
