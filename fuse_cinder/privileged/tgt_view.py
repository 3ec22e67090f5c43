#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.
"""What one privsep daemon knows of a tgtd, so that requests need no listing.

tgtd answers a target listing with every target it serves: at 500
targets that is 600 KB, 8 ms in tgtd and 14 ms to parse, for every
export, ACL change or removal. The entry points must cost the same next
to 0 or 500 other targets, so the daemon remembers the targets it created
or changed and those of its last listing, and lists again only when that
memory cannot answer: a name it does not know, a tid or user tgtd says is
taken, a target tgtd says is gone.

Why a memory is safe here:

- tgtd stays the judge of every creation: a target is created only on a
  tid *and* a name tgtd finds free, an account only under a user it does
  not have. A stale memory costs a listing, never a shared tid.
- A tgtd that restarted (empty, or rebuilt from the config files by its
  boot) has another pid, seen on every connection (SO_PEERCRED); the
  memory is dropped then.
- A listing never undoes a change this daemon made while it was taken:
  names changed meanwhile keep what the daemon itself recorded.
- What others change on targets this daemon knows (an administrator's
  tgtadm) is seen at the next listing: the driver's reconciliation lists
  every ``fuse_tgt_reconcile_interval`` seconds through ``show``.
"""

import bisect
import copy
import itertools
import threading
from typing import Optional

from fuse_cinder.targets import tgtd_mgmt

#: Free descriptor numbers remembered below tgtd's highest one.
MAX_HOLES = 64


class TgtdView(object):
    """The targets of one tgtd (one control port) as this daemon knows them.

    Entry points run in the daemon's thread pool, so every access holds
    ``_lock``; tgtd is never asked while holding it.

    It also keeps a hint of tgtd's free descriptor numbers, for the check
    of the file a new LUN opened (privileged.tgt._OpenCheck): the kernel
    gives a process its lowest free number, so that file lands on one of
    the few lowest, and reading just those in ``/proc/<tgtd>/fd`` costs
    the same beside any number of LUNs, where a listing of the directory
    grows with each (0.4-0.7 ms at 500). The hint is never trusted (the
    check reads what those numbers name before and after the request),
    and a stale one costs a listing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._targets: dict[str, tgtd_mgmt.Target] = {}
        self._claimed: set[int] = set()     # tids being created right now
        # names changed during each listing running, by its token
        self._listings: dict[int, set[str]] = {}
        self._tokens = itertools.count()
        self._holes: list[int] = []         # free numbers below _end, sorted
        self._end: Optional[int] = None     # every number from here is free
        self._lun_fds: dict[str, int] = {}  # target name: its LUN's number

    def check_pid(self, pid: int) -> None:
        """Forget everything when tgtd is another process than before."""
        with self._lock:
            if pid != self._pid:
                self._pid = pid
                self._targets = {}
                self._claimed = set()
                self._end = None
                self._lun_fds = {}

    def get(self, name: str) -> Optional[tgtd_mgmt.Target]:
        """A copy of the remembered target; None if not remembered."""
        with self._lock:
            target = self._targets.get(name)
            return copy.deepcopy(target) if target is not None else None

    def find(self, client: tgtd_mgmt.TgtdClient,
             name: str) -> Optional[tgtd_mgmt.Target]:
        """The target, listing tgtd only if it is not remembered."""
        target = self.get(name)
        if target is None:
            self.refresh(client)
            target = self.get(name)
        return target

    def refresh(self, client: tgtd_mgmt.TgtdClient) -> str:
        """List tgtd and remember what it says; returns the listing text."""
        changed: set[str] = set()
        with self._lock:
            token = next(self._tokens)
            self._listings[token] = changed
        try:
            text = client.show_targets()
            listed = tgtd_mgmt.parse_targets(text)
        finally:
            with self._lock:
                del self._listings[token]
        with self._lock:
            for name in changed:
                listed.pop(name, None)
                if name in self._targets:
                    listed[name] = self._targets[name]
            self._targets = listed
        return text

    def put(self, target: tgtd_mgmt.Target) -> None:
        """Remember a target as this daemon just made it."""
        with self._lock:
            self._changed(target.name)
            self._targets[target.name] = copy.deepcopy(target)
            self._claimed.discard(target.tid)

    def forget(self, name: str) -> None:
        with self._lock:
            self._changed(name)
            self._targets.pop(name, None)
            self._lun_closed(name)

    def claim_tid(self) -> int:
        """The lowest tid no remembered or half-made target holds."""
        with self._lock:
            used = {t.tid for t in self._targets.values()} | self._claimed
            tid = 1
            while tid in used:
                tid += 1
            self._claimed.add(tid)
            return tid

    def release_tid(self, tid: int) -> None:
        with self._lock:
            self._claimed.discard(tid)

    def users_elsewhere(self, user: str, name: str) -> list[str]:
        """Names of the other remembered targets that use ``user``."""
        with self._lock:
            return sorted(t.name for t in self._targets.values()
                          if t.name != name and user in t.accounts)

    # -- tgtd's free descriptor numbers (a hint) --------------------------

    def free_fds(self, count: int) -> Optional[list[int]]:
        """The ``count`` lowest holes and ``count`` numbers from the end.

        None when nothing is known: list tgtd's descriptors (learn_fds).
        """
        with self._lock:
            if self._end is None:
                return None
            return self._holes[:count] + list(range(self._end,
                                                    self._end + count))

    def learn_fds(self, open_fds: set[int]) -> None:
        """A listing of tgtd's open descriptors replaces the hint."""
        top = max(open_fds, default=-1)
        with self._lock:
            self._holes = [fd for fd in range(top)
                           if fd not in open_fds][:MAX_HOLES]
            self._end = top + 1

    def lun_opened(self, name: str, fd: int) -> None:
        """Target ``name``'s LUN holds ``fd`` (freed with the LUN)."""
        with self._lock:
            self._lun_fds[name] = fd
            self._take(fd)

    def lun_closed(self, name: str) -> None:
        with self._lock:
            self._lun_closed(name)

    def forget_fds(self) -> None:
        """The hint missed: the next check lists tgtd's descriptors."""
        with self._lock:
            self._end = None

    def _take(self, fd: int) -> None:
        if self._end is None:
            return
        if fd >= self._end:
            self._holes.extend(range(self._end, fd))
            self._end = fd + 1
        elif fd in self._holes:
            self._holes.remove(fd)
        del self._holes[MAX_HOLES:]

    def _lun_closed(self, name: str) -> None:
        fd = self._lun_fds.pop(name, None)
        if (fd is not None and self._end is not None and fd < self._end
                and fd not in self._holes):
            bisect.insort(self._holes, fd)
            del self._holes[MAX_HOLES:]

    def _changed(self, name: str) -> None:
        for changed in self._listings.values():
            changed.add(name)


_VIEWS: dict[int, TgtdView] = {}
_VIEWS_LOCK = threading.Lock()


def for_port(port: int) -> TgtdView:
    """The daemon's one view of the tgtd on ``port``."""
    with _VIEWS_LOCK:
        view = _VIEWS.get(port)
        if view is None:
            view = _VIEWS[port] = TgtdView()
        return view
