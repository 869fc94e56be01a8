"""Errors a user can act on. The CLI turns each into one line on stderr and a non-zero exit."""


class RaftflError(RuntimeError):
    """A problem with a clear, one-line explanation (bad address, port in use, unsafe etcd)."""


class FencedOut(RaftflError):
    """A guarded write was rejected because the writer no longer holds the role it claims."""


class NodeFatal(RaftflError):
    """A decided stop (the node cannot do its job as configured), not a loop error to retry."""
