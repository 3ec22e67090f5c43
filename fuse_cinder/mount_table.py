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
"""The kernel's mount table, read from procfs: it never blocks on a mount.

Stdlib only, so that the root helper (fuse-cinder-files), the privsep
daemon, the driver and the test sandbox share one reader without
importing Cinder.
"""

import os
import re
from typing import Iterable, NamedTuple, Optional, Protocol, TypeVar

_OCTAL_ESCAPE_RE = re.compile(r'\\([0-7]{3})')
#: Filesystem types of FUSE mounts besides ``fuse.<name>``.
_FUSE_TYPES = ('fuse', 'fuseblk')


def is_fuse_type(fs_type: str) -> bool:
    return fs_type in _FUSE_TYPES or fs_type.startswith('fuse.')


class MountEntry(NamedTuple):
    """One line of /proc/self/mounts.

    A NamedTuple, not a dataclass: importing dataclasses costs the root
    helper, which starts for every file operation, 6 ms of its ~50 ms.
    """

    source: str
    mount_point: str
    fs_type: str
    options: tuple[str, ...]

    @property
    def is_fuse(self) -> bool:
        return is_fuse_type(self.fs_type)

    def option(self, name: str) -> Optional[str]:
        for opt in self.options:
            key, _sep, value = opt.partition('=')
            if key == name:
                return value
        return None

    @property
    def reachable_by_root(self) -> bool:
        """Whether root (cinder's root helper, tgtd) may open its files.

        FUSE hides a mount from every user but its owner unless it was
        mounted with allow_other or allow_root.
        """
        return ('allow_other' in self.options or
                'allow_root' in self.options or
                self.option('user_id') == '0')


def unescape(field: str) -> str:
    """Undo the octal escapes the kernel uses for blanks in mount paths.

    Only those: every other character, non-ASCII ones included, is the
    path's own.
    """
    return _OCTAL_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        entries.append(MountEntry(unescape(fields[0]), unescape(fields[1]),
                                  fields[2], tuple(fields[3].split(','))))
    return entries


class MountId(NamedTuple):
    """One line of /proc/<pid>/mountinfo, as far as identity goes."""

    mount_id: int
    mount_point: str
    #: The filesystem's device number, "major:minor": the same for every
    #: mount of one filesystem, and unique on the machine (FUSE mounts get
    #: an anonymous one each), whatever mount namespace looks at it.
    device: str = ''
    fs_type: str = ''


def parse_mountinfo(text: str) -> list[MountId]:
    """[MountId] of a mountinfo file, in the kernel's order."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        rest = fields[fields.index('-', 6) + 1:] if '-' in fields[6:] else []
        entries.append(MountId(int(fields[0]), unescape(fields[4]),
                               fields[2], rest[0] if rest else ''))
    return entries


def fd_mount_id(fd: int | str, pid: int | str = 'self') -> Optional[int]:
    """The id of the mount holding the file open on ``fd`` (procfs)."""
    with open('/proc/%s/fdinfo/%s' % (pid, fd)) as f:
        for line in f:
            key, _sep, value = line.partition(':')
            if key == 'mnt_id':
                return int(value)
    return None


def fd_fs_type(fd: int | str,
               pid: int | str = 'self') -> Optional[str]:
    """The type of the mount holding ``fd``; None if the kernel names none.

    Looked up in that process's own mount namespace.
    """
    mount_id = fd_mount_id(fd, pid)
    if mount_id is None:
        return None
    with open('/proc/%s/mountinfo' % pid) as f:
        entries = parse_mountinfo(f.read())
    return next((m.fs_type for m in entries if m.mount_id == mount_id), '')


class _Mounted(Protocol):
    @property
    def mount_point(self) -> str: ...


_M = TypeVar('_M', bound=_Mounted)


def find_mount(path: str, entries: Iterable[_M]) -> Optional[_M]:
    """The mount holding ``path``: the longest matching mount point.

    ``path`` is not resolved with realpath, which would stat every component
    on a possibly hung mount; volumes_home must be given without symlinks.
    The last matching entry wins, as the kernel stacks later mounts on top.
    """
    path = os.path.normpath(path)
    best = None
    for entry in entries:
        mp = entry.mount_point
        inside = path == mp or path.startswith(mp.rstrip('/') + '/')
        if inside and (best is None or
                       len(mp) >= len(best.mount_point)):
            best = entry
    return best
