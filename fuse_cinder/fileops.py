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
"""Sparse backing files on the mount.

Every copy is built under a temporary name in the same directory and
renamed into place only once complete, and a new volume is created with
O_EXCL and removed on any failure: a full filesystem, a dead daemon or a
timeout leaves no half-written file under a volume's name, and an
existing file is never overwritten by accident.
"""

import uuid
from typing import Callable, Optional

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import units

from cinder import exception
from cinder.i18n import _

from fuse_cinder import mount as fuse_mount
from fuse_cinder import names

LOG = logging.getLogger(__name__)
# strerror(EXDEV), in the helper's message when a rename crosses mounts.
_EXDEV_TEXT = 'Invalid cross-device link'


class BackingFiles:
    """Create, copy, resize and remove backing files through a FuseMount.

    Every call is one ``fuse-cinder-files`` request, which refuses any
    file that is not the driver's own (see its module docstring).
    """

    def __init__(self, mount: fuse_mount.FuseMount,
                 sparse: bool = True) -> None:
        self.mount = mount
        self.sparse = sparse

    @property
    def provisioning(self) -> str:
        return 'thin' if self.sparse else 'thick'

    @property
    def _allocation_timeout(self) -> Optional[float]:
        """A thick create or grow writes the data: a copy's bound."""
        return None if self.sparse else self.mount.copy_timeout

    def _stat(self, name: str) -> Optional[tuple[str, int, int]]:
        """(kind, size, allocated bytes) of ``name``, or None if missing.

        A final symlink is not followed: it is reported as 'symlink'.
        """
        try:
            out, _err = self.mount.helper('stat', name)
        except processutils.ProcessExecutionError as exc:
            if 'No such file' in (exc.stderr or ''):
                return None
            raise
        kind, size, allocated = out.split()
        return kind, int(size), int(allocated)

    def size(self, name: str) -> Optional[int]:
        """Apparent size in bytes, or None when there is no such file."""
        found = self._stat(name)
        return None if found is None else found[1]

    def exists(self, name: str) -> bool:
        return self._stat(name) is not None

    def file_type(self, name: str) -> Optional[str]:
        """'regular', 'directory', 'symlink', 'other', or None if missing."""
        found = self._stat(name)
        return None if found is None else found[0]

    def _refuse_existing(self, name: str) -> None:
        if self.exists(name):
            raise exception.VolumeBackendAPIException(
                data=_("%(path)s already exists; refusing to overwrite it") %
                {'path': self.mount.path(name)})

    @staticmethod
    def _temp_name(name: str) -> str:
        return names.temp_name(name, uuid.uuid4().hex[:8])

    def _build(self, name: str, steps: Callable[[str], None]) -> None:
        """Run ``steps(temp_name)`` then rename the result to ``name``."""
        self._refuse_existing(name)
        temp = self._temp_name(name)
        try:
            steps(temp)
            self.mount.helper('rename', temp, name, 'keep')
        except Exception:
            LOG.warning("Building %(name)s failed, removing %(temp)s",
                        {'name': name, 'temp': self.mount.path(temp)})
            self.delete(temp, check_exit_code=False)
            raise

    def create(self, name: str, size_gb: int) -> None:
        """A new file of ``size_gb``: a hole, or allocated when thick.

        One request: the helper opens the file with O_EXCL, so an existing
        file is refused rather than resized, and removes what it created
        when it fails. The file is ours from the moment it exists, so a
        helper killed by its timeout is cleaned up here too.
        """
        path = self.mount.path(name)
        try:
            self.mount.helper('create', name, str(size_gb * units.Gi),
                              self.provisioning,
                              timeout=self._allocation_timeout)
        except Exception as exc:
            if 'File exists' in (getattr(exc, 'stderr', None) or ''):
                raise exception.VolumeBackendAPIException(
                    data=_("%(path)s already exists; refusing to overwrite "
                           "it") % {'path': path})
            self.delete(name, check_exit_code=False)
            raise

    def _copy_to(self, src_name: str, temp: str) -> None:
        """Copy ``src_name`` to the new file ``temp``.

        Only the data extents are copied, server-side where the
        filesystem can, and the copy stays sparse even where the
        filesystem hides its holes (see fuse_cinder/cmd/sparse_copy.py);
        Cinder's generic copy would dd every byte instead.
        """
        self.mount.helper('copy', src_name, temp, self.provisioning,
                          timeout=self.mount.copy_timeout)

    def copy(self, src_name: str, dst_name: str,
             size_gb: Optional[int] = None) -> None:
        """A copy of ``src_name``, grown to ``size_gb`` if given."""
        def steps(temp: str) -> None:
            self._copy_to(src_name, temp)
            if size_gb is not None:
                self.extend(temp, size_gb)
        self._build(dst_name, steps)

    def replace(self, src_name: str, dst_name: str) -> None:
        """Overwrite ``dst_name`` with a copy of ``src_name``, all or none.

        The old content stays in place until the new copy is complete.
        """
        temp = self._temp_name(dst_name)
        try:
            self._copy_to(src_name, temp)
            self.mount.helper('rename', temp, dst_name, 'replace')
        except Exception:
            self.delete(temp, check_exit_code=False)
            raise

    def extend(self, name: str, size_gb: int) -> None:
        """Grow a file in place (it may be exported right now)."""
        old = self.size(name)
        new = size_gb * units.Gi
        if old is None:
            raise exception.VolumeBackendAPIException(
                data=_("%s does not exist") % self.mount.path(name))
        if new < old:
            raise exception.InvalidInput(
                reason=_("cannot shrink %(path)s from %(old)d to %(new)d "
                         "bytes") % {'path': self.mount.path(name),
                                     'old': old, 'new': new})
        if new == old:
            return
        # A thick grow writes the new range; the helper puts the old size
        # back when that fails.
        self.mount.helper('grow', name, str(new), self.provisioning,
                          timeout=self._allocation_timeout)

    def move_to(self, name: str, other: 'BackingFiles',
                rename: bool = False) -> str:
        """Move ``name`` into ``other``, another volumes_home, whole.

        ``other`` is the BackingFiles of a second FUSE mount (or the same
        one) of this machine. With ``rename`` the file is first renamed
        there, which the kernel allows only within one mount (EXDEV
        otherwise, then the copy below). The copy is the sparse copy of
        snapshots and clones, built under a temporary name in ``other``
        and renamed into place; the source is removed only once the copy
        is complete. A failure before that leaves the source as it was
        and no file in ``other``. Returns 'rename' or 'copy'.
        """
        other._refuse_existing(name)
        home = other.mount.volumes_home
        if rename:
            try:
                other.mount.helper_from(self.mount.volumes_home, 'rename',
                                        name, name, 'keep')
                return 'rename'
            except processutils.ProcessExecutionError as exc:
                if _EXDEV_TEXT not in (exc.stderr or ''):
                    raise
            LOG.info("%(src)s and %(dst)s are different mounts; copying "
                     "%(name)s", {'src': self.mount.volumes_home,
                                  'dst': home, 'name': name})
        temp = self._temp_name(name)
        try:
            other.mount.helper_from(self.mount.volumes_home, 'copy', name,
                                    temp, other.provisioning,
                                    timeout=self.mount.copy_timeout)
            other.mount.helper('rename', temp, name, 'keep')
        except Exception:
            LOG.warning("Copying %(name)s to %(home)s failed, removing "
                        "%(temp)s", {'name': name, 'home': home,
                                     'temp': other.mount.path(temp)})
            other.delete(temp, check_exit_code=False)
            raise
        try:
            self.delete(name)
        except Exception as exc:
            # The complete copy is the volume now: deleting it could lose
            # the only one if the unlink here went through after all.
            LOG.error("%(name)s was copied to %(home)s but could not be "
                      "removed from %(src)s; remove it there by hand: "
                      "%(err)s", {'name': name, 'home': home,
                                  'src': self.mount.volumes_home,
                                  'err': exc})
        return 'copy'

    def delete(self, name: str, check_exit_code: bool = True
               ) -> Optional[int]:
        """Remove a file; its apparent size, None if there was none."""
        out, _err = self.mount.helper('delete', name,
                                      check_exit_code=check_exit_code)
        return int(out) if out.strip() else None

    def rename(self, src_name: str, dst_name: str) -> None:
        """Rename, never over an existing file."""
        self._refuse_existing(dst_name)
        self.mount.helper('rename', src_name, dst_name, 'keep')

    def list_sizes(self) -> dict[str, int]:
        """{name: apparent size} of the regular files in volumes_home.

        One directory listing, used at start-up and for manage listings.
        Names and sizes are NUL-separated: a file name may hold a newline.
        """
        out, _err = self.mount.helper('list')
        fields = out.split('\0')
        return {name: int(size)
                for name, size in zip(fields[0:-1:2], fields[1:-1:2])}
