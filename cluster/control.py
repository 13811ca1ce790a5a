"""``factory-inspect cluster ...``: deploy the Serve application on a running Ray cluster,
reload it in place, shut it down.

``deploy`` connects to the cluster as a short-lived driver and applies the application's
Serve config (``cluster.deployment.serve_config``) through the Serve controller, as
``serve deploy`` and KubeRay do (here without the dashboard: ``ServeControllerClient.deploy_apps``,
Ray 2.60's client of that same controller call). Serve's HTTP proxy runs on the head node
only (``proxy_location=HeadOnly``, on ``--http-host``/``--http-port``). It returns once the
application is running; the application outlives the driver. ``deploy --reload`` with the
same arguments changes only the deployment's ``user_config``: every replica reconfigures in
place and reloads the categories whose published version changed (no replica restarts, no
request dropped).
"""

from __future__ import annotations

import logging
import time

from cluster.deployment import ClusterArgs, serve_config

log = logging.getLogger(__name__)

APP_NAME = "factory-inspect"


def connect(address: str) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)


def deploy(address: str, args: ClusterArgs, http_host: str = "127.0.0.1", http_port: int = 8000,
           reload: bool = False, timeout_s: float = 300.0) -> str:
    """Deploy (or update) the application and wait until it runs; returns the reload token in force."""
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    connect(address)
    http = {"host": http_host, "port": http_port}
    client = serve_start(http_options=http, proxy_location="HeadOnly")
    token = str(time.time_ns()) if reload else "0"
    client.deploy_apps(ServeDeploySchema(**serve_config(args, token, http, APP_NAME)))
    deadline = time.monotonic() + timeout_s
    while (status := _status(serve)) != "RUNNING":
        if status == "DEPLOY_FAILED" or time.monotonic() > deadline:
            message = serve.status().applications[APP_NAME].message if status else "not found"
            raise RuntimeError(f"application {APP_NAME} did not start ({status}): {message}")
        time.sleep(0.5)
    log.info("application %s running on http://%s:%d (reload %s)", APP_NAME, http_host, http_port, token)
    return token


def _status(serve) -> str | None:
    app = serve.status().applications.get(APP_NAME)
    return str(getattr(app.status, "value", app.status)) if app is not None else None


def shutdown(address: str) -> None:
    from ray import serve

    connect(address)
    serve.shutdown()
