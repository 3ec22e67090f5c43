# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Fault-injecting passthrough FUSE filesystem for functional tests.

The driver keeps volumes on a FUSE mount, so its error handling must be
proven against a mount that fills up, returns EIO, goes slow, hangs or dies.
Real FUSE daemons do none of that on demand; this one does.

The filesystem mirrors a backing directory and runs in its own process (so a
test can SIGKILL it and see ENOTCONN, as after a real daemon crash). The test
process steers it over a unix socket: every command is acknowledged only
after the daemon applied it, so there is no window where a fault is "sent"
but not yet active.

Test side::

    with FaultFS(backing, mountpoint) as fs:
        fs.enospc(after_bytes=4 * 1024 ** 2)  # fills up mid-copy
        fs.eio(op='read', path='/volume-*')
        fs.delay(0.5, op='write')
        fs.hang(op='read')  # then: fs.wait_hung(); ...; fs.release()
        fs.clear()
        fs.kill()  # the mount now answers ENOTCONN
        fs.restart()

By hand::

    python -m fuse_cinder.allinone.faultfs BACKING MOUNTPOINT [--control @name]

Worth knowing when writing fault tests:

- Faults act on FUSE calls, not on syscalls. The page cache sits between:
  a failed readahead is retried by the kernel, and data read once stays
  cached until the file is reopened. Use ``direct_io=True`` when every
  read(2) must reach the daemon.
- A process whose synchronous request (stat, open, write, O_DIRECT read)
  is hung ignores even SIGKILL until the call is released or the daemon
  dies, so code under test cannot reap a timed-out child either; run test
  calls on the mount in threads.

Needs root (or /dev/fuse plus user_allow_other), libfuse3 and mfusepy.
"""

import argparse
import collections
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
import ctypes
import ctypes.util
import dataclasses
import errno
import fnmatch
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
from typing import IO
import uuid

LOG = logging.getLogger('faultfs')

#: What a fault targets: an operation name, several, or None for all.
Ops = str | Iterable[str] | None
#: The names one call answers to, its own first.
Names = tuple[str, ...]

# Operation names a fault can target.
ALL_OPS = frozenset((
    'getattr', 'readdir', 'open', 'create', 'read', 'write', 'flush',
    'release', 'fsync', 'truncate', 'fallocate', 'lseek', 'copy_file_range',
    'statfs', 'unlink', 'rename', 'mkdir', 'rmdir', 'mknod', 'link',
    'symlink', 'readlink', 'chmod', 'chown', 'utimens',
))
# Operations that consume space: what a full filesystem refuses.
SPACE_OPS = ('write', 'create', 'truncate', 'fallocate', 'copy_file_range',
             'mkdir', 'mknod', 'symlink')
# Operations that move data; only these consume an ``after_bytes`` budget.
DATA_OPS = frozenset(('read', 'write', 'copy_file_range'))

# Kernel requests are at most this big (the libfuse3 ceiling; libfuse3's
# fuse_main rejects -o max_write, so init sets it): large sequential I/O
# then costs one round trip per MiB.
MAX_IO = 1024 * 1024

_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_MNT_DETACH = 2
_FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
_FUSE_MAIN_LOOP_ENDED = 8
_STAT_FIELDS = ('st_mode', 'st_ino', 'st_nlink', 'st_uid', 'st_gid',
                'st_rdev', 'st_size', 'st_blksize', 'st_blocks')
_STATVFS_FIELDS = ('f_bsize', 'f_frsize', 'f_blocks', 'f_bfree', 'f_bavail',
                   'f_files', 'f_ffree', 'f_favail', 'f_flag', 'f_namemax')

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                            ctypes.c_int64)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _socket_address(address: str) -> str:
    """'@name' is an abstract socket: no file to clean up, no path limit."""
    if address.startswith('@'):
        return '\0' + address[1:]
    return address


def _norm_ops(op: Ops) -> frozenset[str]:
    """None means every operation; unknown names are errors, not no-ops."""
    if op is None:
        return ALL_OPS
    ops = frozenset((op,) if isinstance(op, str) else op)
    unknown = ops - ALL_OPS
    if unknown:
        raise ValueError('unknown operation(s): %s' %
                         ', '.join(sorted(unknown)))
    return ops


def _path_matches(pattern: str | None, path: str | None) -> bool:
    return pattern is None or (path is not None and
                               fnmatch.fnmatchcase(path, pattern))


def lazy_unmount(mountpoint: str) -> bool:
    """Detach a mount even if its daemon is dead or hung.

    umount2() is tried first because it never stats the mountpoint (a hung
    daemon would block that); fusermount3 covers unprivileged callers.
    """
    if _libc.umount2(os.fsencode(mountpoint), _MNT_DETACH) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EINVAL:  # not a mountpoint (any more)
        return False
    try:
        res = subprocess.run(['fusermount3', '-u', '-z', mountpoint],
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, timeout=10,
                             check=False)
        return res.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def is_mounted(mountpoint: str) -> bool:
    """Whether mountpoint has a mount, read from mountinfo.

    os.path.ismount() would stat the mountpoint, which hangs on a hung
    daemon; mountinfo never touches the filesystem.
    """
    with open('/proc/self/mountinfo', 'rb') as mountinfo:
        for line in mountinfo:
            fields = line.split(b' ')
            target = fields[4].decode('unicode_escape').encode('latin-1')
            if os.fsdecode(target) == mountpoint:
                return True
    return False


class _Rule(object):
    __slots__ = ('ops', 'errno', 'budget', 'count', 'path')

    def __init__(self, ops: frozenset[str], err: int,
                 after_bytes: int | None, count: int | None,
                 path: str | None) -> None:
        self.ops = ops
        self.errno = err
        self.budget = after_bytes
        self.count = count
        self.path = path

    def matches(self, names: Names, path: str | None) -> bool:
        return not self.ops.isdisjoint(names) and _path_matches(self.path,
                                                                path)


class Faults(object):
    """Fault table shared by the FUSE worker threads and the control server.

    One condition variable guards everything, so a command acknowledged to
    the test is seen by every call that starts afterwards.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rules: list[_Rule] = []
        self._delay: tuple[float, frozenset[str], str | None] | None = None
        self._hang: tuple[frozenset[str], str | None] | None = None
        self._hang_gen = 0
        self._hung = 0
        self._active = False
        self._calls: collections.Counter[str] = collections.Counter()
        self._failed: collections.Counter[str] = collections.Counter()
        self._bytes: collections.Counter[str] = collections.Counter()

    def _update(self) -> None:
        self._active = bool(self._rules or self._delay or self._hang)

    def admit(self, names: Names, path: str | None, size: int = 0,
              first: bool = True) -> int:
        """Apply faults to one call: return how many bytes it may move.

        ``names`` are the names the call answers to (copy_file_range is
        also a 'read' of its source and a 'write' of its destination).
        Delays and hangs apply only to the ``first`` admission of a call.
        Raises OSError when an error rule fires.
        """
        op = names[0]
        data = op in DATA_OPS
        with self._cond:
            if first:
                self._calls[op] += 1
            if not self._active:
                if data:
                    self._bytes[names[-1]] += size
                return size
            delay = self._delay
            hang = self._hang
        if first and delay and delay[1] & set(names) and _path_matches(
                delay[2], path):
            time.sleep(delay[0])
        if first and hang:
            self._wait_if_hung(names, path)
        with self._cond:
            return self._check_rules(names, path, size, data)

    def _wait_if_hung(self, names: Names, path: str | None) -> None:
        with self._cond:
            hang = self._hang
            if not hang or hang[0].isdisjoint(names) or not _path_matches(
                    hang[1], path):
                return
            gen = self._hang_gen
            self._hung += 1
            self._cond.notify_all()
            try:
                while self._hang_gen == gen:
                    self._cond.wait()
            finally:
                self._hung -= 1

    def _check_rules(self, names: Names, path: str | None, size: int,
                     data: bool) -> int:
        allowed = size
        writes = data and names[-1] != 'read'
        fired = None
        for rule in self._rules:
            if not rule.matches(names, path):
                continue
            if not rule.budget:  # no budget, or budget used up
                fired = rule
                break
            if writes:
                # A filling filesystem writes what fits, then refuses.
                allowed = min(allowed, rule.budget)
        if fired is not None:
            if fired.count is not None:
                fired.count -= 1
                if fired.count <= 0:
                    self._rules.remove(fired)
                    self._update()
            self._failed[names[0]] += 1
            raise OSError(fired.errno, os.strerror(fired.errno))
        if data:
            for rule in self._rules:
                if rule.budget and rule.matches(names, path):
                    rule.budget = max(0, rule.budget - allowed)
            self._bytes[names[-1]] += allowed
        return allowed

    # Control commands; each returns something JSON-serialisable.

    def cmd_ping(self) -> int:
        return os.getpid()

    def cmd_inject(self, op: Ops, errno: int, after_bytes: int | None = None,
                   count: int | None = None,
                   path: str | None = None) -> None:
        rule = _Rule(_norm_ops(op), int(errno), after_bytes, count, path)
        with self._cond:
            self._rules.append(rule)
            self._update()

    def cmd_delay(self, seconds: float, op: Ops = None,
                  path: str | None = None) -> None:
        with self._cond:
            self._delay = (float(seconds), _norm_ops(op), path) \
                if seconds else None
            self._update()

    def cmd_hang(self, op: Ops = None, path: str | None = None) -> None:
        with self._cond:
            self._hang = (_norm_ops(op), path)
            self._update()

    def cmd_release(self) -> None:
        with self._cond:
            self._hang = None
            self._hang_gen += 1
            self._cond.notify_all()
            self._update()

    def cmd_clear(self) -> None:
        with self._cond:
            self._rules = []
            self._delay = None
        self.cmd_release()

    def cmd_stats(self) -> dict[str, int | dict[str, int]]:
        with self._cond:
            return {'pid': os.getpid(), 'hung': self._hung,
                    'calls': dict(self._calls), 'failed': dict(self._failed),
                    'bytes_read': self._bytes['read'],
                    'bytes_written': self._bytes['write'],
                    'rules': len(self._rules)}

    def command(self, request: dict[str, Any]) -> object:
        name = request.pop('cmd')
        handler = getattr(self, 'cmd_' + name, None)
        if handler is None:
            raise ValueError('unknown command %r' % name)
        return handler(**request)


class _ControlServer(threading.Thread):
    """One JSON request line in, one JSON reply line out, per connection."""

    def __init__(self, address: str, faults: Faults) -> None:
        super(_ControlServer, self).__init__(name='faultfs-control',
                                             daemon=True)
        self._faults = faults
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(_socket_address(address))
        self._sock.listen(16)

    def run(self) -> None:
        while True:
            conn, _ = self._sock.accept()
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile('rwb') as stream:
            for line in stream:
                try:
                    reply = {'ok': True,
                             'result': self._faults.command(json.loads(line))}
                except Exception as exc:
                    reply = {'ok': False,
                             'error': '%s: %s' % (type(exc).__name__, exc)}
                stream.write(json.dumps(reply).encode() + b'\n')
                stream.flush()


@dataclasses.dataclass(frozen=True)
class MountOptions:
    """How the daemon serves its mount: FaultFS passes them to serve().

    They cross a process boundary, so argv() and main() are the two ends
    of one command line.
    """

    #: Kernel entry/attribute cache seconds; 0 (the default) lets every
    #: getattr reach the daemon, so faults on it are seen.
    attr_timeout: float = 0.0
    #: Bypass the page cache: every read(2) reaches the daemon.
    direct_io: bool = False

    def argv(self) -> list[str]:
        """The daemon's command-line options that main() reads back."""
        args = ['--attr-timeout', str(self.attr_timeout)]
        if self.direct_io:
            args.append('--direct-io')
        return args


class Passthrough(object):
    """mfusepy operations mirroring a directory, every call fault-checked.

    Not derived from mfusepy.Operations so that importing this module (on
    the test side) does not load libfuse.
    """

    use_ns = True

    def __init__(self, backing: str, faults: Faults,
                 get_context: Callable[[], tuple[int, int, int]] | None = None,
                 options: MountOptions | None = None) -> None:
        self._root = os.path.realpath(backing)
        self._faults = faults
        self._get_context = get_context
        self._options = options or MountOptions()

    def _real(self, path: str) -> str:
        return self._root + path

    def _owned(self, real: str, follow: bool = True) -> None:
        """Give new entries to the caller, as a real filesystem would."""
        if self._get_context is None or os.geteuid() != 0:
            return
        uid, gid, _pid = self._get_context()
        if (uid, gid) != (0, 0):
            os.chown(real, uid, gid, follow_symlinks=follow)

    def init_with_config(self, conn: Any, config: Any) -> None:
        # conn and config: mfusepy's ctypes structures (untyped).
        if config is not None:
            # By default (0) no kernel caching of names/attributes: a fault
            # on getattr is seen, and changes made directly in the backing
            # show at once.
            config.entry_timeout = self._options.attr_timeout
            config.attr_timeout = self._options.attr_timeout
            config.negative_timeout = self._options.attr_timeout
            config.use_ino = 1
            # Passthrough keeps real fds: unlink-while-open needs no
            # .fuse_hidden files in the backing directory.
            config.hard_remove = 1
            config.direct_io = int(self._options.direct_io)
        if conn is not None:
            conn.max_write = MAX_IO
            conn.max_readahead = MAX_IO
            # Else each read(2) costs a GETATTR round trip (attributes are
            # never cached); the page cache is still dropped on every open.
            conn.want &= ~_FUSE_CAP_AUTO_INVAL_DATA

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        self._faults.admit(('getattr',), path)
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        attrs = {key: getattr(st, key) for key in _STAT_FIELDS}
        attrs['st_atime'] = st.st_atime_ns
        attrs['st_mtime'] = st.st_mtime_ns
        attrs['st_ctime'] = st.st_ctime_ns
        return attrs

    def readdir(self, path: str,
                fh: int) -> list[tuple[str, dict[str, int], int]]:
        # Inode numbers are required: with use_ino, a bare name would go out
        # as inode 0, which readdir(3) silently skips.
        self._faults.admit(('readdir',), path)
        real = self._real(path)
        here = os.lstat(real)
        parent = os.lstat(os.path.dirname(real)) if path != '/' else here
        entries = [('.', {'st_ino': here.st_ino, 'st_mode': here.st_mode}, 0),
                   ('..', {'st_ino': parent.st_ino,
                           'st_mode': parent.st_mode}, 0)]
        with os.scandir(real) as scan:
            for entry in scan:
                mode = entry.stat(follow_symlinks=False).st_mode
                entries.append((entry.name, {'st_ino': entry.inode(),
                                             'st_mode': mode}, 0))
        return entries

    def readlink(self, path: str) -> str:
        self._faults.admit(('readlink',), path)
        return os.readlink(self._real(path))

    def statfs(self, path: str) -> dict[str, int]:
        self._faults.admit(('statfs',), path)
        st = os.statvfs(self._real(path))
        return {key: getattr(st, key) for key in _STATVFS_FIELDS}

    def open(self, path: str, flags: int) -> int:
        self._faults.admit(('open',), path)
        # Our buffers are not aligned for O_DIRECT; the kernel already
        # honours O_DIRECT on its side of the mount.
        return os.open(self._real(path), flags & ~os.O_DIRECT)

    def create(self, path: str, mode: int, flags: int) -> int:
        self._faults.admit(('create',), path)
        real = self._real(path)
        fd = os.open(real, (flags | os.O_CREAT) & ~os.O_DIRECT, mode)
        self._owned(real)
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        size = self._faults.admit(('read',), path, size)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        size = self._faults.admit(('write',), path, len(data))
        return os.pwrite(fh, memoryview(data)[:size] if size < len(data)
                         else data, offset)

    def flush(self, path: str, fh: int) -> int:
        self._faults.admit(('flush',), path)
        return 0

    def release(self, path: str, fh: int) -> int:
        # The fd must be closed whatever is injected: only delays/hangs.
        try:
            self._faults.admit(('release',), path)
        except OSError:
            pass
        finally:
            os.close(fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._faults.admit(('fsync',), path)
        (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._faults.admit(('truncate',), path)
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._real(path), length)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int,
                  fh: int) -> int:
        self._faults.admit(('fallocate',), path)
        if _libc.fallocate(fh, mode, offset, size) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return 0

    def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
        # The kernel only forwards SEEK_DATA/SEEK_HOLE; without this every
        # file on the mount looks fully allocated to sparse-aware copies.
        self._faults.admit(('lseek',), path)
        return os.lseek(fh, offset, whence)

    def copy_file_range(self, path_in: str, fh_in: int, off_in: int,
                        path_out: str, fh_out: int, off_out: int, size: int,
                        flags: int) -> int:
        size = self._faults.admit(('copy_file_range', 'read'), path_in, size)
        size = self._faults.admit(('copy_file_range', 'write'), path_out,
                                  size, first=False)
        return os.copy_file_range(fh_in, fh_out, size, off_in, off_out)

    def unlink(self, path: str) -> int:
        self._faults.admit(('unlink',), path)
        os.unlink(self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._faults.admit(('rename',), old)
        os.rename(self._real(old), self._real(new))
        return 0

    def link(self, target: str, source: str) -> int:
        self._faults.admit(('link',), target)
        os.link(self._real(source), self._real(target))
        return 0

    def symlink(self, target: str, source: str) -> int:
        # mfusepy passes (link path, link contents).
        self._faults.admit(('symlink',), target)
        real = self._real(target)
        os.symlink(source, real)
        self._owned(real, follow=False)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._faults.admit(('mkdir',), path)
        real = self._real(path)
        os.mkdir(real, mode)
        self._owned(real)
        return 0

    def rmdir(self, path: str) -> int:
        self._faults.admit(('rmdir',), path)
        os.rmdir(self._real(path))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._faults.admit(('mknod',), path)
        real = self._real(path)
        os.mknod(real, mode, dev)
        self._owned(real)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._faults.admit(('chmod',), path)
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._faults.admit(('chown',), path)
        os.chown(self._real(path), uid, gid, follow_symlinks=False)
        return 0

    def utimens(self, path: str,
                times: tuple[int, int] | None = None) -> int:
        self._faults.admit(('utimens',), path)
        real = self._real(path)
        if times is None:
            os.utime(real, follow_symlinks=False)
            return 0
        # libfuse encodes UTIME_NOW/UTIME_OMIT as tv_sec 0 + magic tv_nsec.
        now = time.time_ns()
        current = os.lstat(real)
        atime, mtime = times
        atime = {_UTIME_NOW: now,
                 _UTIME_OMIT: current.st_atime_ns}.get(atime, atime)
        mtime = {_UTIME_NOW: now,
                 _UTIME_OMIT: current.st_mtime_ns}.get(mtime, mtime)
        os.utime(real, ns=(atime, mtime), follow_symlinks=False)
        return 0


def _load_mfusepy() -> Any:
    """Import mfusepy bound to libfuse3.

    mfusepy prefers libfuse2 when both are installed, but only the libfuse3
    API has lseek and copy_file_range.
    """
    os.environ.setdefault('FUSE_LIBRARY_NAME', 'fuse3')
    import mfusepy
    return mfusepy


def _fuse_class(mfusepy: Any) -> type:
    """mfusepy.FUSE plus the C-side wrappers it lacks (lseek, cfr).

    mfusepy is untyped: its FUSE class and the ctypes fuse_file_info
    pointers (``fip``) are Any here.
    """

    class FaultFUSE(mfusepy.FUSE):
        def _decode(self, path: bytes | None) -> str | None:
            return None if path is None else path.decode(self.encoding,
                                                         self.errors)

        def lseek(self, path: bytes, offset: int, whence: int,
                  fip: Any) -> int:
            fh = fip.contents.fh if fip else None
            return self.operations.lseek(self._decode(path), offset, whence,
                                         fh)

        def copy_file_range(self, path_in: bytes, fip_in: Any, off_in: int,
                            path_out: bytes, fip_out: Any, off_out: int,
                            size: int, flags: int) -> int:
            return self.operations.copy_file_range(
                self._decode(path_in), fip_in.contents.fh, off_in,
                self._decode(path_out), fip_out.contents.fh, off_out, size,
                flags)

    return FaultFUSE


def _watch_parent(mountpoint: str) -> None:
    """Unmount and exit when the spawning test process goes away."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    lazy_unmount(mountpoint)
    os._exit(3)


def serve(backing: str, mountpoint: str, control: str | None = None,
          watch_parent: bool = False, options: MountOptions | None = None,
          debug: bool = False) -> None:
    """Mount and serve in the foreground until unmounted or signalled."""
    mfusepy = _load_mfusepy()
    if mfusepy.fuse_version_major != 3:
        LOG.warning('libfuse %d: lseek/copy_file_range unavailable',
                    mfusepy.fuse_version_major)
    faults = Faults()
    if control:
        _ControlServer(control, faults).start()
    if watch_parent:
        threading.Thread(target=_watch_parent, args=(mountpoint,),
                         name='faultfs-watchdog', daemon=True).start()
    ops = Passthrough(backing, faults, mfusepy.fuse_get_context, options)
    try:
        _fuse_class(mfusepy)(ops, mountpoint, foreground=True, debug=debug,
                             allow_other=True, default_permissions=True,
                             fsname='faultfs', subtype='faultfs')
    except RuntimeError as exc:
        # libfuse 3 reports a loop ended by SIGTERM/SIGINT/SIGHUP as 8.
        if exc.args != (_FUSE_MAIN_LOOP_ENDED,):
            raise


class FaultFS(object):
    """Test-side handle: spawns the daemon, injects faults, always cleans up.

    Use as a context manager (or call start()/stop(), e.g. from a pytest
    finalizer). stop() unmounts and reaps the daemon whatever state it is
    in: healthy, hung, or killed.
    """

    def __init__(self, backing: str, mountpoint: str,
                 attr_timeout: float = 0.0, direct_io: bool = False,
                 start_timeout: float = 20.0,
                 log_path: str | None = None) -> None:
        self.backing = os.path.realpath(backing)
        # Resolved now: later the mountpoint may be dead or hung, and
        # resolving it then would stat it.
        self.mountpoint = os.path.realpath(mountpoint)
        self.options = MountOptions(attr_timeout, direct_io)
        self.start_timeout = start_timeout
        # The daemon's stderr; without a path, an anonymous file that is
        # only read to explain a failed start.
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._address: str | None = None

    # Lifecycle

    def __enter__(self) -> 'FaultFS':
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def mounted(self) -> bool:
        return is_mounted(self.mountpoint)

    def start(self) -> None:
        """Mount and return once the mount answers and faults can be set."""
        if self.alive:
            raise RuntimeError('faultfs already running (pid %s)' % self.pid)
        if self.mounted:  # left over from kill(): ENOTCONN until detached
            lazy_unmount(self.mountpoint)
        os.makedirs(self.mountpoint, exist_ok=True)
        self._address = '@faultfs-%s' % uuid.uuid4().hex
        cmd = [sys.executable, os.path.abspath(__file__),
               self.backing, self.mountpoint, '--control', self._address,
               '--watch-parent'] + self.options.argv()
        if self._log is None:
            self._log = (open(self.log_path, 'ab+') if self.log_path
                         else tempfile.TemporaryFile())
        # Own session: a ^C aimed at the tests must not kill the daemon
        # before stop() unmounts; the watchdog covers a dead test process.
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                problem = 'exited with %s' % self._proc.returncode
                break
            if self.mounted:
                try:
                    self._command('ping', timeout=2)
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        else:
            problem = 'did not mount within %ss' % self.start_timeout
        problem = 'faultfs %s: %s' % (problem, self._log_tail())
        self.stop()
        raise RuntimeError(problem)

    def stop(self) -> None:
        """Unmount and reap the daemon; safe to call in any state, twice."""
        if self.alive:
            try:
                self._command('clear', timeout=2)
            except (OSError, RuntimeError):
                pass
        lazy_unmount(self.mountpoint)
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        if self.mounted:
            lazy_unmount(self.mountpoint)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the daemon: the mount stays and gives ENOTCONN."""
        if self._proc is None or not self.alive:
            raise RuntimeError('faultfs is not running')
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)

    def restart(self) -> None:
        """Remount on the same mountpoint (after kill() or not).

        The new daemon starts with no faults.
        """
        self.stop()
        self.start()

    # Faults

    def inject(self, op: Ops, errno: int = errno.EIO,
               after_bytes: int | None = None, count: int | None = None,
               path: str | None = None) -> None:
        """Make ``op`` (a name, list of names, or None for all) fail.

        after_bytes: fail only once this many bytes have been moved by the
            rule's own data ops (read, write, copy_file_range) since now;
            a write crossing the limit is cut short, as on a full disk.
        count: fail this many calls, then the rule goes away (transient).
            Calls, not syscalls: the kernel retries a failed readahead
            with a synchronous read, so count=1 on reads may go unseen.
        path: glob on the path inside the mount ('/volume-*').
        """
        self._command('inject', op=self._ops_arg(op), errno=errno,
                      after_bytes=after_bytes, count=count,
                      path=self._path_arg(path))

    def enospc(self, after_bytes: int | None = None, count: int | None = None,
               path: str | None = None) -> None:
        """The filesystem is (or becomes, after_bytes later) full."""
        self.inject(SPACE_OPS, errno.ENOSPC, after_bytes=after_bytes,
                    count=count, path=path)

    def eio(self, op: Ops = ('read', 'write'), after_bytes: int | None = None,
            count: int | None = None, path: str | None = None) -> None:
        """I/O errors, on reads and writes unless told otherwise."""
        self.inject(op, errno.EIO, after_bytes=after_bytes, count=count,
                    path=path)

    def delay(self, seconds: float, op: Ops = None,
              path: str | None = None) -> None:
        """Sleep ``seconds`` in each matching call; 0 stops delaying."""
        self._command('delay', seconds=seconds, op=self._ops_arg(op),
                      path=self._path_arg(path))

    def hang(self, op: Ops = None, path: str | None = None) -> None:
        """Block matching calls until release(), clear() or stop()."""
        self._command('hang', op=self._ops_arg(op), path=self._path_arg(path))

    def release(self) -> None:
        """Let hung calls (and later ones) go on."""
        self._command('release')

    def clear(self) -> None:
        """Remove all faults and release hung calls."""
        self._command('clear')

    def stats(self) -> dict[str, Any]:
        """Counters: calls/failed per op, bytes_read/written, hung."""
        return self._command('stats')

    def wait_hung(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``count`` calls are blocked in a hang; True if so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()['hung'] >= count:
                return True
            time.sleep(0.01)
        return False

    # Helpers

    def _ops_arg(self, op: Ops) -> list[str] | None:
        ops = _norm_ops(op)  # fail early, in the test
        return None if ops == ALL_OPS else sorted(ops)

    def _path_arg(self, path: str | None) -> str | None:
        if path is None:
            return None
        if path.startswith(self.mountpoint + os.sep):
            path = path[len(self.mountpoint):]
        return path if path.startswith('/') else '/' + path

    def _command(self, cmd: str, timeout: float = 10.0,
                 **args: object) -> Any:
        """Send one command; its JSON-decoded result."""
        if self._address is None:
            raise RuntimeError('faultfs was never started')
        args['cmd'] = cmd
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(_socket_address(self._address))
            sock.sendall(json.dumps(args).encode() + b'\n')
            with sock.makefile('rb') as stream:
                line = stream.readline()
        if not line:
            raise ConnectionError('faultfs closed the control connection')
        reply = json.loads(line)
        if not reply['ok']:
            raise RuntimeError('faultfs %s: %s' % (cmd, reply['error']))
        return reply['result']

    def _log_tail(self, size: int = 4096) -> str:
        if self._log is None:
            return ''
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - size))
        return self._log.read().decode(errors='replace')


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m fuse_cinder.allinone.faultfs',
        description='Fault-injecting passthrough FUSE filesystem.')
    parser.add_argument('backing', help='directory to mirror')
    parser.add_argument('mountpoint')
    parser.add_argument('--control', help='control socket: a path, or '
                        '@name for an abstract unix socket')
    parser.add_argument('--watch-parent', action='store_true',
                        help='unmount and exit when the parent dies')
    parser.add_argument('--attr-timeout', type=float, default=0.0,
                        help='kernel entry/attribute cache seconds')
    parser.add_argument('--direct-io', action='store_true',
                        help='bypass the page cache on the mount')
    parser.add_argument('--debug', action='store_true')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format='%(asctime)s %(name)s %(levelname)s '
                               '%(message)s')
    serve(args.backing, args.mountpoint, control=args.control,
          watch_parent=args.watch_parent,
          options=MountOptions(args.attr_timeout, args.direct_io),
          debug=args.debug)
    return 0


if __name__ == '__main__':
    sys.exit(main())
