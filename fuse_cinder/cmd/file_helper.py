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
"""fuse-cinder-files: the driver's only way to touch the mount as root.

cinder-volume runs it through its root helper under ``timeout -s KILL``
(DESIGN.rst: every call on the mount is a killable child process). Root
power ends at the driver's own files, whatever the arguments say:

* the directory must be absolute and normalised, and the descriptor
  opened on it must lie on a FUSE filesystem (its mount id, from
  /proc/self/fdinfo, looked up in /proc/self/mountinfo): /etc, /var or a
  symlink to them are refused however they are spelled;
* every file is reached relative to that descriptor by one name checked
  against ``fuse_cinder.names``, never followed through a symlink
  (O_NOFOLLOW), and only regular files are read, written or renamed;
* content is created, copied, grown or deleted only for the driver's own
  names (volume-, snapshot-, its temporaries and probes); an operator's
  file may only be looked at and renamed to a volume or snapshot name
  (manage);
* ``copy`` and ``rename`` may take a second volumes_home as their last
  argument (a migration to another backend of this host): it is checked
  like the first, only a volume goes there, and under its own name or
  its own temporary name.

Errors go to stderr as one line ending in the system's ``strerror`` text
(the driver recognises ENOSPC, ENOTCONN, ENOENT and EEXIST by it); a
refused request exits 2.
"""

import argparse
import ctypes
import errno
import mmap
import os
import stat
import sys
from typing import Callable, Optional

from fuse_cinder.cmd import sparse_copy
from fuse_cinder import mount_table
from fuse_cinder import names

PROG = 'fuse-cinder-files'
ZERO_CHUNK = 1 << 20
_OPEN_FILE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
OTHER_HOME_HELP = ('the volumes_home of another backend to put the '
                   'volume in (a migration); checked as the first')


class Refused(Exception):
    """A request outside what the driver may do as root."""


def is_fuse_fd(fd: int) -> bool:
    """Whether the file open on ``fd`` lies on a FUSE filesystem."""
    fs_type = mount_table.fd_fs_type(fd)
    if fs_type is None:
        raise Refused('the kernel does not say which mount holds the '
                      'directory')
    return mount_table.is_fuse_type(fs_type)


def open_home(path: str, require_fuse: bool = True) -> int:
    """A descriptor on the volumes_home ``path``, refused unless on FUSE."""
    if (not isinstance(path, str) or not os.path.isabs(path) or
            os.path.normpath(path) != path or '\n' in path or
            '\x00' in path):
        raise Refused('%r is not an absolute, normalised directory' % path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if require_fuse and not is_fuse_fd(fd):
            raise Refused('%s is not on a FUSE filesystem' % path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(name: str, test: Callable[[str], bool], what: str) -> str:
    if not test(name):
        raise Refused('%r is not %s' % (name, what))
    return name


def owned(name: str) -> str:
    return _check(name, names.is_owned, "one of the driver's file names")


def plain(name: str) -> str:
    return _check(name, names.is_plain, 'a plain file name')


def _open_regular(home: int, name: str, flags: int,
                  mode: int = 0o600) -> int:
    """Open ``name`` in ``home`` as a regular file, never via a symlink.

    O_NONBLOCK keeps a FIFO planted under our name from blocking the
    open; the type is checked before anything is read or written.
    """
    fd = os.open(name, flags | _OPEN_FILE, mode, dir_fd=home)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused('%s is not a regular file' % name)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                            ctypes.c_int64)


def _fallocate(fd: int, offset: int, length: int) -> None:
    """fallocate(2) itself, never glibc's emulation of it.

    posix_fallocate writes one byte per block where the filesystem has
    no fallocate: a FUSE round trip each.
    """
    if _libc.fallocate(fd, 0, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def allocate(fd: int, offset: int, length: int) -> None:
    """Give [offset, offset + length) real blocks (thick volumes).

    Many FUSE filesystems have no fallocate: then zeros are written in
    1 MiB O_DIRECT requests (buffered ones reach the daemon in small
    pieces, several times slower).
    """
    try:
        _fallocate(fd, offset, length)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    direct = sparse_copy.reopen_direct(fd, os.O_WRONLY)
    buf = mmap.mmap(-1, ZERO_CHUNK)         # page aligned, for O_DIRECT
    try:
        end = offset + length
        while offset < end:
            count = min(ZERO_CHUNK, end - offset)
            target = fd
            if (direct is not None and count == ZERO_CHUNK and
                    offset % ZERO_CHUNK == 0):
                target = direct             # aligned: O_DIRECT
            sparse_copy.write_all(target, memoryview(buf)[:count], offset)
            offset += count
    finally:
        if direct is not None:
            os.close(direct)
    os.fsync(fd)


def do_create(home: int, args: argparse.Namespace) -> None:
    """A new file of the given size, never an existing one (O_EXCL)."""
    name, size = owned(args.name), args.size
    fd = _open_regular(home, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.ftruncate(fd, size)
        if args.provisioning == 'thick':
            allocate(fd, 0, size)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=home)
        raise
    os.close(fd)


def do_grow(home: int, args: argparse.Namespace) -> None:
    """Grow a file in place; shrinking is refused (it would lose data)."""
    fd = _open_regular(home, owned(args.name), os.O_WRONLY)
    try:
        old = os.fstat(fd).st_size
        if args.size < old:
            raise Refused('%s is %d bytes; it cannot shrink to %d'
                          % (args.name, old, args.size))
        os.ftruncate(fd, args.size)
        if args.provisioning == 'thick' and args.size > old:
            try:
                allocate(fd, old, args.size - old)
            except BaseException:
                os.ftruncate(fd, old)
                raise
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISREG, 'regular'), (stat.S_ISDIR, 'directory'),
                       (stat.S_ISLNK, 'symlink')):
        if test(mode):
            return word
    return 'other'


def do_stat(home: int, args: argparse.Namespace) -> None:
    """Type, apparent size and allocated bytes; a symlink is not followed."""
    st = os.stat(plain(args.name), dir_fd=home, follow_symlinks=False)
    print('%s %d %d' % (_kind(st.st_mode), st.st_size, st.st_blocks * 512))


def do_delete(home: int, args: argparse.Namespace) -> None:
    """Remove one of the driver's files; a missing one is fine.

    Prints the apparent size removed (nothing when there was no file), so
    that the driver's count of provisioned bytes needs no stat of its own.
    """
    name = owned(args.name)
    try:
        st = os.stat(name, dir_fd=home, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise Refused('%s is a directory' % name)
    try:
        os.unlink(name, dir_fd=home)
    except FileNotFoundError:
        return
    print(st.st_size)


def _volume_to_other_home(args: argparse.Namespace) -> tuple[str, str]:
    """The names of a copy or rename into a second volumes_home.

    A migration moves one volume, under its own name or the temporary
    name it is built under; nothing else crosses to another directory.
    """
    src = _check(args.src, names.is_volume, 'a volume')
    if args.op == 'rename':
        if args.dst != src or args.existing != 'keep':
            raise Refused('a volume keeps its name and never replaces a '
                          'file in another volumes_home')
        return src, args.dst
    return src, _check(args.dst, lambda n: names.is_temp_of(n, src),
                       'the temporary name of %s' % src)


def do_rename(home: int, args: argparse.Namespace) -> None:
    """Rename a regular file to a name of the driver's, inside home.

    The source may be any plain name (manage takes an operator's file as
    a volume or a snapshot);
    never a symlink or a directory, which would then be served as a
    volume. Into another volumes_home only a volume goes, under its own
    name (the kernel refuses, EXDEV, unless both are on one mount).
    """
    if args.dst_home is not None:
        src, dst = _volume_to_other_home(args)
    else:
        src = plain(args.src)
        dst = _check(args.dst, names.is_rename_target,
                     'a volume or snapshot file name')
    if not stat.S_ISREG(os.stat(src, dir_fd=home,
                                follow_symlinks=False).st_mode):
        raise Refused('%s is not a regular file' % src)
    if args.existing == 'keep':
        try:
            os.stat(dst, dir_fd=args.dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    os.rename(src, dst, src_dir_fd=home, dst_dir_fd=args.dst_fd)


def do_list(home: int, args: argparse.Namespace) -> None:
    """name NUL size NUL for every regular file; names may hold newlines."""
    out = []
    with os.scandir(home) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                out.append(b'%s\0%d\0' % (os.fsencode(entry.name), size))
    sys.stdout.buffer.write(b''.join(sorted(out)))


def do_statfs(home: int, args: argparse.Namespace) -> None:
    st = os.fstatvfs(home)
    print('%d %d %d' % (st.f_frsize, st.f_blocks, st.f_bavail))


def do_probe(home: int, args: argparse.Namespace) -> None:
    """Create, flush and remove an empty file: is the mount writable?"""
    name = names.probe_name(os.urandom(16).hex())
    fd = _open_regular(home, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name, dir_fd=home)


def do_copy(home: int, args: argparse.Namespace) -> None:
    """Copy a volume or snapshot to a new file (see sparse_copy).

    With a second volumes_home, a volume to its temporary name there.
    """
    if args.dst_home is not None:
        src_name, dst_name = _volume_to_other_home(args)
    else:
        src_name = _check(args.src, names.is_object, 'a volume or snapshot')
        dst_name = owned(args.dst)
    src = _open_regular(home, src_name, os.O_RDONLY)
    stats: dict[str, object] = {}
    try:
        dst = _open_regular(args.dst_fd, dst_name,
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            how = sparse_copy.copy_fds(
                src, dst, thick=args.provisioning == 'thick', stats=stats)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if args.verbose:
        # The copy used, then what it found and moved by which method.
        print(' '.join([how] + ['%s=%s' % item
                                for item in sorted(stats.items())]))


def do_read(home: int, args: argparse.Namespace) -> None:
    """Write a volume or snapshot to stdout, for an image upload.

    cinder-volume reads the pipe, so no process of its own ever opens a
    file on the mount. 1 MiB O_DIRECT reads, as the copy does.
    """
    src = _open_regular(home, _check(args.name, names.is_object,
                                     'a volume or snapshot'), os.O_RDONLY)
    direct = sparse_copy.reopen_direct(src, os.O_RDONLY)
    buf = mmap.mmap(-1, sparse_copy.CHUNK)
    out = sys.stdout.fileno()
    try:
        pos, size = 0, os.fstat(src).st_size
        while pos < size:
            got = os.preadv(src if direct is None else direct,
                            [memoryview(buf)[:sparse_copy.CHUNK]], pos)
            if got <= 0:
                raise OSError(errno.EIO, 'source ended early at %d' % pos)
            got = min(got, size - pos)
            view = memoryview(buf)[:got]
            while view:
                view = view[os.write(out, view):]
            pos += got
    finally:
        os.close(src)
        if direct is not None:
            os.close(direct)


def _size(text: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise argparse.ArgumentTypeError('not a size in bytes: %r' % text)
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Operate on the driver's backing files "
        'inside one volumes_home on a FUSE mount.')
    ops = parser.add_subparsers(dest='op', required=True)

    def op(name: str, func: Callable[[int, argparse.Namespace], None],
           *args: str) -> argparse.ArgumentParser:
        sub = ops.add_parser(name)
        sub.add_argument('home')
        for arg in args:
            sub.add_argument(arg)
        sub.set_defaults(func=func)
        return sub

    for name, func in (('create', do_create), ('grow', do_grow)):
        sub = op(name, func, 'name')
        sub.add_argument('size', type=_size)
        sub.add_argument('provisioning', choices=('thin', 'thick'))
    op('stat', do_stat, 'name')
    op('delete', do_delete, 'name')
    sub = op('rename', do_rename, 'src', 'dst')
    sub.add_argument('existing', choices=('keep', 'replace'))
    sub.add_argument('dst_home', nargs='?', help=OTHER_HOME_HELP)
    op('list', do_list)
    op('statfs', do_statfs)
    op('probe', do_probe)
    op('read', do_read, 'name')
    sub = op('copy', do_copy, 'src', 'dst')
    sub.add_argument('provisioning', choices=('thin', 'thick'))
    sub.add_argument('dst_home', nargs='?', help=OTHER_HOME_HELP)
    sub.add_argument('--verbose', action='store_true',
                     help='say which copy was used and how many bytes it '
                     'wrote or copied server-side')
    return parser


def main(argv: Optional[list[str]] = None, require_fuse: bool = True) -> int:
    """Run one request; ``require_fuse`` is False only in unit tests."""
    args = _parser().parse_args(argv)
    what = ' '.join(str(v) for v in (args.op, getattr(args, 'name', None) or
                                     getattr(args, 'src', '')) if v)
    other = getattr(args, 'dst_home', None)
    where = args.home if other is None else '%s and %s' % (args.home, other)
    try:
        home = open_home(args.home, require_fuse)
        try:
            args.dst_fd = (home if other is None
                           else open_home(other, require_fuse))
            try:
                args.func(home, args)
            finally:
                if args.dst_fd != home:
                    os.close(args.dst_fd)
        finally:
            os.close(home)
    except Refused as exc:
        print('%s: refused: %s' % (PROG, exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print('%s: %s in %s: %s' % (PROG, what, where,
                                    exc.strerror or exc), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
