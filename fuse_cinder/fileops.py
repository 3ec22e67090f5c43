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

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import units

from cinder import exception
from cinder.i18n import _

LOG = logging.getLogger(__name__)

TEMP_PREFIX = '.fuse_cinder_tmp-'


class SparseFiles:
    """Create, copy, resize and remove backing files through a FuseMount."""

    def __init__(self, mount, sparse=True):
        self.mount = mount
        self.sparse = sparse

    def _stat(self, name, fmt):
        """stat's ``fmt`` of ``name`` (not following a final symlink).

        None when there is no such file.
        """
        try:
            out, _err = self.mount.run('stat', '-c', fmt,
                                       self.mount.path(name))
        except processutils.ProcessExecutionError as exc:
            if 'No such file' in (exc.stderr or ''):
                return None
            raise
        return out.strip()

    def size(self, name):
        """Apparent size in bytes, or None when there is no such file."""
        out = self._stat(name, '%s')
        return None if out is None else int(out)

    def exists(self, name):
        return self.size(name) is not None

    def _refuse_existing(self, name):
        if self.exists(name):
            raise exception.VolumeBackendAPIException(
                data=_("%(path)s already exists; refusing to overwrite it") %
                {'path': self.mount.path(name)})

    def _temp_name(self, name):
        return '%s%s-%s' % (TEMP_PREFIX, name, uuid.uuid4().hex[:8])

    def _build(self, name, steps):
        """Run ``steps(temp_path)`` then rename the result to ``name``."""
        self._refuse_existing(name)
        temp = self.mount.path(self._temp_name(name))
        try:
            steps(temp)
            self.mount.run('mv', '-T', temp, self.mount.path(name))
        except Exception:
            LOG.warning("Building %(name)s failed, removing %(temp)s",
                        {'name': name, 'temp': temp})
            self.mount.run('rm', '-f', temp, check_exit_code=False)
            raise

    def create(self, name, size_gb):
        """A new file of ``size_gb``: a hole, or zeros when thick.

        One command: dd opens the file with O_EXCL (conv=excl), so an
        existing file is refused rather than resized, and gives it its
        size with ftruncate (seek, count=0). The file is ours from the
        moment it exists, so any later failure removes it.
        """
        path = self.mount.path(name)
        try:
            self.mount.run('dd', 'if=/dev/null', 'of=%s' % path, 'bs=1',
                           'count=0', 'seek=%d' % (size_gb * units.Gi),
                           'conv=excl', 'status=none')
        except processutils.ProcessExecutionError as exc:
            if 'File exists' in (exc.stderr or ''):
                raise exception.VolumeBackendAPIException(
                    data=_("%(path)s already exists; refusing to overwrite "
                           "it") % {'path': path})
            self.mount.run('rm', '-f', path, check_exit_code=False)
            raise
        except Exception:
            self.mount.run('rm', '-f', path, check_exit_code=False)
            raise
        if not self.sparse:
            try:
                self._allocate(path, 0, size_gb * units.Gi)
            except Exception:
                self.mount.run('rm', '-f', path, check_exit_code=False)
                raise

    def _allocate(self, path, offset, length):
        """Back [offset, offset+length) with real blocks (thick volumes).

        Many FUSE filesystems have no fallocate (EOPNOTSUPP): write zeros
        then, which costs a full write but gives the same guarantee, in
        1 MiB O_DIRECT requests (buffered ones go to the daemon in small
        pieces: 4x slower on bindfs). The range is inside the file
        already, so no keep-size mode (-n), which bindfs refuses.
        """
        try:
            self.mount.run('fallocate', '-o', str(offset), '-l', str(length),
                           path, timeout=self.mount.copy_timeout)
        except processutils.ProcessExecutionError as exc:
            if 'not supported' not in (exc.stderr or ''):
                raise
            self.mount.run('dd', 'if=/dev/zero', 'of=%s' % path,
                           'bs=1M', 'seek=%d' % (offset // units.Mi),
                           'count=%d' % (length // units.Mi),
                           'oflag=direct', 'conv=notrunc,fsync',
                           'status=none',
                           timeout=self.mount.copy_timeout)

    def _copy_to(self, src, temp):
        """Copy ``src`` to the new file ``temp`` with fuse-cinder-copy.

        It copies only the data extents, server-side where the
        filesystem can, and keeps the copy sparse even where the
        filesystem hides its holes (see fuse_cinder/cmd/sparse_copy.py);
        Cinder's generic copy would dd every byte instead.
        """
        cmd = ['fuse-cinder-copy', src, temp]
        if not self.sparse:
            cmd.insert(1, '--thick')
        self.mount.run(*cmd, timeout=self.mount.copy_timeout)

    def copy(self, src_name, dst_name, size_gb=None):
        """A copy of ``src_name``, grown to ``size_gb`` if given."""
        src = self.mount.path(src_name)

        def steps(temp):
            self._copy_to(src, temp)
            if size_gb is not None:
                self._grow(temp, size_gb)
        self._build(dst_name, steps)

    def replace(self, src_name, dst_name):
        """Overwrite ``dst_name`` with a copy of ``src_name``, all or none.

        The old content stays in place until the new copy is complete.
        """
        temp = self.mount.path(self._temp_name(dst_name))
        try:
            self._copy_to(self.mount.path(src_name), temp)
            self.mount.run('mv', '-T', temp, self.mount.path(dst_name))
        except Exception:
            self.mount.run('rm', '-f', temp, check_exit_code=False)
            raise

    def _grow(self, path, size_gb):
        out, _err = self.mount.run('stat', '-c', '%s', path)
        old = int(out)
        new = size_gb * units.Gi
        if new < old:
            raise exception.InvalidInput(
                reason=_("cannot shrink %(path)s from %(old)d to %(new)d "
                         "bytes") % {'path': path, 'old': old, 'new': new})
        if new == old:
            return
        self.mount.run('truncate', '-s', str(new), path)
        if not self.sparse:
            try:
                self._allocate(path, old, new - old)
            except Exception:
                self.mount.run('truncate', '-s', str(old), path,
                               check_exit_code=False)
                raise

    def extend(self, name, size_gb):
        """Grow an existing file in place (it may be exported right now)."""
        if not self.exists(name):
            raise exception.VolumeBackendAPIException(
                data=_("%s does not exist") % self.mount.path(name))
        self._grow(self.mount.path(name), size_gb)

    def delete(self, name):
        """Remove a file; a missing one is not an error."""
        self.mount.run('rm', '-f', self.mount.path(name))

    def rename(self, src_name, dst_name):
        self._refuse_existing(dst_name)
        self.mount.run('mv', '-T', self.mount.path(src_name),
                       self.mount.path(dst_name))

    def list_sizes(self):
        """{name: apparent size} of the regular files in volumes_home.

        One directory listing, used at start-up and for manage listings.
        """
        out, _err = self.mount.run('find', self.mount.volumes_home,
                                   '-maxdepth', '1', '-type', 'f',
                                   '-printf', '%f/%s\\n')
        sizes = {}
        for line in out.splitlines():
            name, _sep, size = line.rpartition('/')
            if name:
                sizes[name] = int(size)
        return sizes

    def file_type(self, name):
        """'regular file', 'symbolic link', ... or None if missing."""
        return self._stat(name, '%F')
