"""The aggregator election, in the shape of etcd's `client/v3/concurrency/election.go`.

An `Election` owns the role key and, once won, the key's create revision: the **term**. The
term is read from the create transaction's own header, so it names exactly the key this
node created. `fence` guards every write the aggregator makes (`proclaim`, `resign`, events,
checkpoints): once the key is gone or re-created, each of them fails instead of landing.

No caller writes the fence: `step_down()` forgets the term locally, `resign()` deletes our
key, `free(term)` deletes another node's key of that term (a takeover on evidence), and
`clear_malformed(rev)` deletes an unreadable key that has not changed since `rev`.

In a secured cluster the claim is signed for the role key and names this node's lease
(raftfl/core/role.py), so nobody else can write it in our name, nor copy it to another term.
"""

from __future__ import annotations

from raftfl.core.keys import Keys
from raftfl.core.role import role_record
from raftfl.etcd import signers
from raftfl.etcd.store import Fence, Store


class Election:
    def __init__(self, store: Store, keys: Keys, node: str, flower_address: str):
        self.store = store
        self.keys = keys  # the cluster's: its role key, and where our certificate is published
        self.key = keys.aggregator
        self.node = node
        self.flower_address = flower_address
        self.fence: Fence | None = None
        self.lease: int | None = None

    @property
    def term(self) -> int | None:
        return self.fence.create_revision if self.fence else None

    def campaign(self, lease: int) -> int | None:
        """Create the role key on `lease` if it is absent; returns the term won, or None."""
        term = self.store.create_revision(self.key, self._claim(0, lease), lease=lease)
        if term is None:
            # A retried create that had landed answers "exists": the lease says whose key it is.
            kv = self.store.get(self.key)
            if kv is None or kv.lease != lease:
                return None
            term = kv.create_revision
        self.fence, self.lease = Fence(self.key, term), lease
        self.proclaim()
        return term

    def adopt(self, term: int, lease: int) -> None:
        """Take over a term this node already holds (its key on its current lease)."""
        self.fence, self.lease = Fence(self.key, term), lease

    def proclaim(self) -> bool:
        """Write the term into the role value; False when the term is no longer ours."""
        if self.fence is None:
            return False
        return self.store.put_fenced(self.key, self._claim(self.fence.create_revision, self.lease),
                                     self.fence, lease=self.lease)

    def _claim(self, term: int, lease: int | None) -> str:
        """The role value: signed, with our lease, when this node has a TLS identity."""
        signed = signers.signer() is not None
        record = role_record(self.node, self.flower_address, term, lease if signed else None)
        return signers.seal_json(self.store, self.keys, self.key, record)

    def resign(self) -> bool:
        """Give the role up at once (planned handover, shutdown); guarded by the term."""
        fence, self.fence = self.fence, None
        return fence is not None and self.store.delete(self.key, fence=fence)

    def step_down(self) -> None:
        """Forget our term (deposed, or fenced out): nothing more is written for it."""
        self.fence = None

    def free(self, term: int) -> bool:
        """Delete the role key of `term`, held by a node that is evidently gone; True if
        this call deleted it (fenced on that term: a newer holder's key is never touched)."""
        return self.store.delete(self.key, fence=Fence(self.key, term))

    def clear_malformed(self, mod_revision: int) -> bool:
        """Delete an unreadable role key, unless it changed since `mod_revision`."""
        return self.store.delete_if_unchanged(self.key, mod_revision)
