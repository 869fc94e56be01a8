"""A node's operator surface: its HTTP API, Prometheus metrics and live dashboard.

One server per node (`server.ApiServer`, raft port + 400), answering from threads of its own.
What it knows of the node is the immutable `NodeStatus` the HA loop publishes each cycle
(raftfl/core/status.py); everything else it reads from etcd with a client of its own, through
the same functions as the CLI (raftfl/inspection.py, raftfl/control.py,
raftfl/etcd/handover.py). It never imports the node: the node is below it.

    auth.py       who a request is (its client certificate) and what it may do
    probes.py     /health, /liveness, /readiness, /aggregator from the snapshot (pure)
    runstats.py   failovers, recovery and fit outcomes folded from a run's events (pure)
    ledger.py     every run's runstats, kept up to date from etcd incrementally
    metrics.py    the Prometheus collector, computed at scrape time
    stream.py     a run's events as server-sent events, from an etcd watch
    dashboard.py  the dashboard's static files (static/, uPlot vendored)
    routes.py     the routing table and the handlers;  context.py  what handlers share
    server.py     the HTTP(S) server and its request handler
"""
