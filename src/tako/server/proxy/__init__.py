"""The HTTP/HTTPS data plane of tako-server: a reverse proxy on uvloop + httptools asyncio Protocols.

Public API (used by the daemon):

    proxy = ProxyServer(settings: ProxySettings, services: ServerServices, certs: CertStore,
                        snapshot: Snapshot, *, https_redirect_port: int | None = None,
                        reuse_port: bool = False,   # SO_REUSEPORT, for several worker processes
                        body_dir: Path | None = None)   # temporary files of buffered bodies
    proxy.set_snapshot(snapshot)             # atomic swap; requests that start later use it
    await proxy.start_http(host, port, *, forward=False) -> int   # bound port (0 = ephemeral);
                                             # forward=True proxies instead of redirecting
    await proxy.start_https(host, port) -> int
    await proxy.shutdown(timeout)            # stop accepting; finish in-flight under the deadline; close

The proxy wires `certs.set_routed_host_predicate` to its current snapshot (self-signed fallback for
routed hosts). Redirects to HTTPS name the HTTPS listener's port unless it is 443 or
`https_redirect_port` is given. Modules: `server` (listeners, pools, sweeper), `client` (per
connection), `cycle` (per request, and the callbacks between client and upstream), `upstream` (instance
connections), `body_buffer` (request bodies held before forwarding), `responses` (local answers),
`backend` (the interface to the app runtime), `cold_start` (the cold-start admission every gate uses),
`compiled` (whether `cycle`, `client` and `upstream` run compiled). See docs/proxy.md.
"""

from tako.server.proxy import compiled

compiled.select()  # before anything imports the modules it chooses for

from tako.server.proxy.server import ProxyServer  # noqa: E402

__all__ = ["ProxyServer"]
