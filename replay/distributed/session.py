"""Ray for ``--ray [ADDRESS]``: the optional import and the session (the option itself is
:func:`lobstream.cli.options.ray`)."""

from __future__ import annotations

import os

INSTALL_HINT = "pip install 'lobstream[ray]'"
# the local Ray started by --ray with no address: small object store (results are small)
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which."""


def import_ray():
    """The ``ray`` module, or :class:`RayUnavailable` saying how to install it."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(
            f"--ray needs Ray, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return ray


class RaySession:
    """``with RaySession(address) as ray:``: Ray connected for the block.

    Starts (``address`` None or ``"local"``: a new local Ray, ``num_cpus`` of them, all by
    default) or joins (an address) Ray unless it is already initialised in this process (a
    test's fixture, a notebook), and shuts down only what it started."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, **init):
        self.address = address
        self.num_cpus = num_cpus
        self.init = init
        self._started = False

    def __enter__(self):
        ray = import_ray()
        if not ray.is_initialized():
            if self.address in (None, "local"):
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    object_store_memory=self.init.pop(
                        "object_store_memory", LOCAL_OBJECT_STORE_BYTES
                    ),
                    log_to_driver=self.init.pop("log_to_driver", False),
                    **self.init,
                )
            else:
                try:
                    ray.init(address=self.address, **self.init)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise RayUnavailable(
                        f"--ray={self.address}: cannot join that Ray cluster ({exc}); start one "
                        "with `ray start --head`, or give a bare --ray for a local Ray"
                    ) from None
            self._started = True
        return ray

    def __exit__(self, *exc) -> None:
        if self._started:
            import ray

            ray.shutdown()
