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
"""The FUSE mount under volumes_home: inspection and bounded commands.

Nothing in this module touches the mount from the cinder-volume process
itself. A dead FUSE daemon answers ENOTCONN, but a hung one blocks every
caller for ever, and a blocked system call in cinder-volume would freeze
its whole eventlet loop. So every call on the mount is a child process run
through the driver's executor under ``timeout -s KILL``: the loop keeps
running, and the child is killed (as root, by ``timeout`` itself) when the
daemon does not answer.
"""

import copy
import os
import select
import shlex
import subprocess
import threading
import time
from typing import Any, BinaryIO, Callable, IO, NoReturn, Optional, Sequence

from oslo_concurrency import processutils
from oslo_log import log as logging

from cinder import exception
from cinder.i18n import _
from cinder import utils

from fuse_cinder import mount_table
from fuse_cinder import processes

LOG = logging.getLogger(__name__)

# Exit statuses of ``timeout -s KILL`` when it had to kill the command:
# 137, or -9 when the KILL it sends to its process group also ended
# timeout itself before it could exit (processutils reports the signal).
_KILLED_BY_TIMEOUT = (128 + 9, -9)
# How long past its own deadline a killed command may take to exit.
_REAP_GRACE = 5
_ENOTCONN_TEXT = 'Transport endpoint is not connected'
_ENOSPC_TEXT = 'No space left on device'
# fuse-cinder-files exits 2 with this word when it refuses a request.
_REFUSED_TEXT = ': refused: '
_NOT_FUSE_TEXT = 'not on a FUSE filesystem'
#: The root helper every call on the mount goes through.
HELPER = 'fuse-cinder-files'
# Bytes per read from a streaming helper's pipe.
_PIPE_CHUNK = 1 << 20


class _Deadline(Exception):
    """A streaming helper sent nothing until its deadline."""


class FuseMountUnavailable(exception.VolumeBackendAPIException):
    """The mount is missing, dead or hung: the backend is down."""

    message = _("FUSE mount %(mount)s is unavailable: %(reason)s")


class FuseNoSpace(exception.VolumeBackendAPIException):
    message = _("No space left on FUSE mount %(mount)s: %(reason)s")


def _copy_sparse(pipe: IO[bytes], out: BinaryIO, deadline: float) -> int:
    """Copy a pipe into ``out``, seeking over zeros; returns the size."""
    zeros = bytes(_PIPE_CHUNK)
    size = 0
    while True:
        ready, _w, _x = select.select(
            [pipe], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise _Deadline()
        data = os.read(pipe.fileno(), _PIPE_CHUNK)
        if not data:
            return size
        if data == zeros[:len(data)]:
            out.seek(len(data), os.SEEK_CUR)
        else:
            out.write(data)
        size += len(data)


class FuseMount:
    """volumes_home on its FUSE mount, driven through an executor."""

    def __init__(self, volumes_home: str,
                 execute: Callable[..., tuple[str, str]],
                 fs_call_timeout: float, copy_timeout: float,
                 check_fuse: bool = True,
                 mounts_file: str = '/proc/self/mounts',
                 mountinfo_file: str = '/proc/self/mountinfo',
                 popen: Callable[..., 'subprocess.Popen[bytes]'] = (
                     subprocess.Popen)) -> None:
        self.volumes_home = os.path.normpath(volumes_home)
        self._execute = execute
        self._popen = popen
        self.fs_call_timeout = fs_call_timeout
        self.copy_timeout = copy_timeout
        self.check_fuse = check_fuse
        self.mounts_file = mounts_file
        self.mountinfo_file = mountinfo_file
        # The last look of shared_capacity: when it ended, its answer
        # ((0, 0) with an error) and its error; the look running, if any.
        self._look: tuple[float, tuple[int, int], Optional[Exception]] = (
            -float('inf'), (0, 0), None)
        self._looking: Optional[threading.Event] = None
        self._looking_lock = threading.Lock()

    def path(self, name: str) -> str:
        return os.path.join(self.volumes_home, name)

    def entry(self) -> Optional[mount_table.MountEntry]:
        """The mount entry for volumes_home, read from the kernel's table.

        The mount table lives in procfs, so reading it never blocks on the
        FUSE daemon.
        """
        with open(self.mounts_file) as f:
            return mount_table.find_mount(
                self.volumes_home, mount_table.parse_mounts(f.read()))

    def identity(self) -> Optional[int]:
        """The kernel's id of the mount holding volumes_home (procfs).

        A remount gets a new id, and a detached mount keeps its id for as
        long as a file opened on it (by tgtd) is open; so an unchanged id
        means that no handle points into a replaced mount.
        """
        found = self._mountinfo()
        return found.mount_id if found else None

    def device(self) -> Optional[str]:
        """The device number of the filesystem under volumes_home (procfs).

        What tells two volumes_home of this machine on one filesystem
        apart from two that only look alike (the same path in another
        mount namespace); None when no mount holds it.
        """
        found = self._mountinfo()
        return found.device if found else None

    def _mountinfo(self) -> Optional[mount_table.MountId]:
        with open(self.mountinfo_file) as f:
            return mount_table.find_mount(
                self.volumes_home, mount_table.parse_mountinfo(f.read()))

    def run(self, *cmd: str, timeout: Optional[float] = None,
            **kwargs: Any) -> tuple[str, str]:
        """Run one command on the mount as root, bounded in time.

        Failures a FUSE mount is known for become Cinder exceptions that
        name the mount; others propagate as ProcessExecutionError.
        """
        timeout = timeout or self.fs_call_timeout
        try:
            # A process blocked in a FUSE request ignores even SIGKILL until
            # the daemon answers, and then 'timeout' waits for it in vain:
            # the executor's own deadline stops waiting for it regardless.
            return self._execute('timeout', '-s', 'KILL', str(timeout),
                                 *cmd, run_as_root=True,
                                 timeout=timeout + _REAP_GRACE, **kwargs)
        except processutils.ProcessExecutionError as exc:
            self._translate(exc, cmd, timeout)
            raise
        except Exception as exc:
            if not processes.is_timeout_expired(exc):
                raise
            self._hung(_("'%(cmd)s' is stuck in the FUSE daemon and could "
                         "not be killed after %(timeout)s s") %
                       {'cmd': cmd[0], 'timeout': timeout})

    def helper(self, op: str, *args: str,
               **kwargs: Any) -> tuple[str, str]:
        """One ``fuse-cinder-files`` request on volumes_home (see run)."""
        return self.run(HELPER, op, self.volumes_home, *args, **kwargs)

    def helper_from(self, source: str, op: str, *args: str,
                    **kwargs: Any) -> tuple[str, str]:
        """A request from the volumes_home ``source`` into this one.

        ``fuse-cinder-files OP SOURCE ARGS... VOLUMES_HOME`` (a migration's
        copy or rename); its failures name this mount, where the new file
        goes.
        """
        return self.run(HELPER, op, source, *args, self.volumes_home,
                        **kwargs)

    def read_into(self, name: str, dest: str) -> None:
        """Copy the backing file ``name`` into the local file ``dest``.

        For image uploads: Cinder's would open the file on the mount inside
        cinder-volume. Here a ``fuse-cinder-files read`` child streams it
        through a pipe under the copy timeout (the executor would hold
        the whole volume in memory), and zero blocks stay holes in
        ``dest``. The pipe is read with select() under a deadline, so a
        child stuck in the daemon beyond SIGKILL is abandoned, not waited
        for.
        """
        timeout = self.copy_timeout
        helper = [HELPER, 'read', self.volumes_home, name]
        cmd = ['timeout', '-s', 'KILL', str(timeout)] + helper
        if os.geteuid() != 0:
            # What processutils.execute puts in front for run_as_root.
            cmd = shlex.split(utils.get_root_helper()) + cmd
        deadline = time.monotonic() + timeout + _REAP_GRACE
        proc = self._popen(cmd, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Both are pipes: Popen was asked for them.
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with open(dest, 'wb') as out:
                out.truncate(_copy_sparse(proc.stdout, out, deadline))
            stderr = os.fsdecode(proc.stderr.read())
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (_Deadline, subprocess.TimeoutExpired):
            self._hung(_("'%(cmd)s' is stuck in the FUSE daemon and could "
                         "not be killed after %(timeout)s s") %
                       {'cmd': HELPER, 'timeout': timeout})
        finally:
            proc.stdout.close()
            proc.stderr.close()
        if code:
            exc = processutils.ProcessExecutionError(
                exit_code=code, stderr=stderr, cmd=' '.join(cmd))
            self._translate(exc, helper, timeout)
            raise exc

    def _hung(self, reason: str) -> NoReturn:
        LOG.error("FUSE mount of %(home)s is hung: %(reason)s",
                  {'home': self.volumes_home, 'reason': reason})
        raise FuseMountUnavailable(mount=self.volumes_home, reason=reason)

    def _translate(self, exc: processutils.ProcessExecutionError,
                   cmd: Sequence[str], timeout: float) -> None:
        stderr = exc.stderr or ''
        if exc.exit_code in _KILLED_BY_TIMEOUT:
            self._hung(_("'%(cmd)s' got no answer within %(timeout)s s; "
                         "the FUSE daemon is hung") %
                       {'cmd': cmd[0], 'timeout': timeout})
        if _ENOTCONN_TEXT in stderr:
            reason = _("the FUSE daemon is gone (ENOTCONN); restart it and "
                       "remount %s") % self.volumes_home
            LOG.error("FUSE mount of %(home)s is dead: %(stderr)s",
                      {'home': self.volumes_home, 'stderr': stderr})
            raise FuseMountUnavailable(mount=self.volumes_home,
                                       reason=reason)
        if _ENOSPC_TEXT in stderr:
            raise FuseNoSpace(mount=self.volumes_home, reason=stderr.strip())
        if _REFUSED_TEXT in stderr:
            LOG.error("The root helper refused '%(cmd)s': %(stderr)s",
                      {'cmd': ' '.join(cmd[:2]), 'stderr': stderr.strip()})
            if _NOT_FUSE_TEXT in stderr:
                raise FuseMountUnavailable(mount=self.volumes_home,
                                           reason=stderr.strip())
            raise exception.VolumeBackendAPIException(data=stderr.strip())

    def check_mounted(self) -> Optional[mount_table.MountEntry]:
        """Refuse a volumes_home whose FUSE filesystem is not mounted.

        Without its mount, volumes_home is a plain directory of the host:
        volumes must not go there. Reads procfs only; never blocks.
        """
        entry = self.entry()
        if self.check_fuse and (entry is None or not entry.is_fuse):
            raise FuseMountUnavailable(
                mount=self.volumes_home,
                reason=_("it is not on a FUSE filesystem (found %s); "
                         "mount the FUSE client first") %
                (entry.fs_type if entry else 'no mount'))
        return entry

    def check(self) -> Optional[mount_table.MountEntry]:
        """Refuse a volumes_home that root or tgtd could not really use."""
        entry = self.check_mounted()
        # With check_fuse, check_mounted has refused a missing mount.
        if self.check_fuse and entry is not None:
            if not entry.reachable_by_root:
                raise FuseMountUnavailable(
                    mount=self.volumes_home,
                    reason=_("%s is mounted without allow_other or "
                             "allow_root, so root and tgtd cannot open "
                             "its files") % entry.mount_point)
        for op, problem in (('statfs', _("it is not a usable directory")),
                            ('probe', _("cannot create files there"))):
            try:
                self.helper(op)
            except processutils.ProcessExecutionError as exc:
                raise FuseMountUnavailable(
                    mount=self.volumes_home,
                    reason='%s: %s' % (problem, (exc.stderr or '').strip()))
        return entry

    def check_answers(self) -> None:
        """Fail naming the mount unless it answers a bounded look."""
        self.shared_capacity()

    def shared_capacity(self) -> tuple[int, int]:
        """capacity(), from a look that ended after the call began.

        The mount table is read every time (procfs, it never blocks); a
        bounded statvfs (capacity) is the look. Callers that ask while a
        look runs take its result, failure too, so a burst of exports, or
        of the statistics Cinder asks for after every deletion, shares a
        few looks (a child process each cost a burst of 100 exports 3 s
        in the all-in-one), and on a hung mount waits for one call
        timeout, not one each. They wait on an event, which wakes them
        all at once: behind a lock held during the look, eventlet handed
        it on one waiter per loop turn, and such a burst queued for 10 s.
        """
        self.check_mounted()
        asked = time.monotonic()
        mine = False
        while True:
            ended, answer, error = self._look
            if ended >= asked:
                break
            with self._looking_lock:    # held only to pick who looks
                running = self._looking
                if running is None:
                    running = self._looking = threading.Event()
                    mine = True
            if not mine:
                running.wait()
                continue
            answer, error = (0, 0), None
            try:
                try:
                    answer = self.capacity()
                except Exception as exc:
                    error = exc
                self._look = (time.monotonic(), answer, error)
            finally:    # interrupted too: a waiter then looks itself
                self._looking = None
                running.set()
            break
        if error is not None:
            # Each waiter raises a copy: one traceback per exception.
            raise error if mine else copy.copy(error).with_traceback(None)
        return answer

    def capacity(self) -> tuple[int, int]:
        """(total, available) bytes of the filesystem, from statvfs."""
        self.check_mounted()
        out, _err = self.helper('statfs')
        block, total, avail = (int(v) for v in out.split())
        return total * block, avail * block
