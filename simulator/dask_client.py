"""A Dask distributed client for ``--cluster ADDRESS|local`` (sweeps and the main job's evaluation).

``local`` starts a `distributed.LocalCluster` of ``workers`` single-threaded
worker processes (closed with the client); an address (``tcp://host:8786``)
connects to a running scheduler. Dask is imported only here and only when a
cluster is asked for; a missing install or an unreachable scheduler is an
`InputError` (one line, exit 2). Why Dask: `reports.engines`.
"""

from __future__ import annotations

import logging

from simulator.errors import InputError

__all__ = ["connect"]


def connect(cluster: str, workers: int, flag: str = "--cluster"):
    """(client, local cluster or None) for ``cluster`` (an address or ``local``)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(f"{flag}: Dask distributed is not installed (pip install 'dask[distributed]')") from None
    if cluster == "local":
        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                             silence_logs=logging.ERROR)     # no nanny chatter on stderr when it closes
        return Client(local), local
    try:
        return Client(cluster, timeout="10s"), None
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"{flag} {cluster}: cannot connect to a Dask scheduler ({type(e).__name__})") from None
