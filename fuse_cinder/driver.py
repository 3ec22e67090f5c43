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
"""Cinder volume driver: sparse files on a FUSE mount, exported by tgt.

Select it with ``volume_driver = fuse_cinder.driver.FuseISCSIDriver``.
Each volume is the file ``<volumes_home>/<volume.name>`` and each snapshot
a sparse copy ``<volumes_home>/<snapshot.name>``; tgtd serves the files as
LUN 1 of one target per volume.
"""

import math
import os
import socket
import threading
import time
from typing import Any, Optional

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

from cinder.common import constants
from cinder import context
from cinder import exception
from cinder.i18n import _
from cinder.image import image_utils
from cinder import interface
from cinder import objects
from cinder.volume import driver
from cinder.volume import volume_utils

from fuse_cinder import fileops
from fuse_cinder import mount as fuse_mount
from fuse_cinder import names
from fuse_cinder import options
from fuse_cinder import processes
from fuse_cinder.targets import tgt
from fuse_cinder import watch

LOG = logging.getLogger(__name__)

VERSION = '1.0.0'
#: Seconds one successful look at the mount vouches for it to
#: ensure_export (the start-up burst).
ENSURE_MOUNT_TTL = 10.0
#: The first field of the location_info capability: a backend of this
#: driver (subclasses included), whose files another one can reach.
LOCATION_DRIVER = 'FuseISCSIDriver'
#: Statuses a volume may have when it is moved by the driver: detached.
_MOVABLE = ('available',)


@interface.volumedriver
class FuseISCSIDriver(driver.ISCSIDriver):
    """Volumes as sparse files on a FUSE mount, served over iSCSI by tgt."""

    VERSION = VERSION
    CI_WIKI_NAME = 'fuse_cinder_CI'
    SUPPORTS_ACTIVE_ACTIVE = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Cinder's manager passes no executor; ours spawns the mount's
        # commands without forking all of cinder-volume (see processes).
        kwargs.setdefault('execute', processes.execute)
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(options.fuse_opts)
        self.configuration.append_config_values(options.tgt_opts)
        self.backend_name = (
            self.configuration.safe_get('volume_backend_name') or 'FUSE')
        self.mount = fuse_mount.FuseMount(
            self.configuration.volumes_home, self._execute,
            self.configuration.fuse_fs_call_timeout,
            self.configuration.fuse_copy_timeout,
            check_fuse=self.configuration.fuse_check_mount)
        self.files = fileops.BackingFiles(
            self.mount, sparse=self.configuration.fuse_sparse_volumes)
        self.target_driver = tgt.TgtFileTarget(
            configuration=self.configuration, db=self.db)
        self._provisioned_bytes = 0
        self._provisioned_lock = threading.Lock()
        # The mount the exported LUNs were opened on (see _heal_luns).
        self._luns_mount_id: Optional[int] = None
        self._heal_lock = threading.Lock()
        self._backend_down = False
        self._last_reconcile = 0.0
        self._watch: Optional[threading.Thread] = None
        # When the mount last answered a look for ensure_export.
        self._mount_seen_alive: Optional[float] = None
        # The machine, in location_info: a migration reaches another
        # backend's files only on the same one.
        self.hostname = socket.gethostname()

    @staticmethod
    def get_driver_options() -> list[cfg.Opt]:
        return options.fuse_opts + options.tgt_opts

    # -- setup ---------------------------------------------------------

    def do_setup(self, context: Any) -> None:
        """Check the mount and count what is provisioned on it, once.

        The count is kept up to date by every operation afterwards, so
        statistics never have to list the directory again.
        """
        self._check_name_templates()
        entry = self.mount.check()
        self._luns_mount_id = self.mount.identity()
        sizes = self.files.list_sizes()
        self._provisioned_bytes = sum(
            size for name, size in sizes.items() if names.is_object(name))
        LOG.info("FUSE backend %(backend)s ready on %(home)s (%(fs)s), "
                 "%(count)d backing files, %(gb).1f GiB provisioned",
                 {'backend': self.backend_name,
                  'home': self.mount.volumes_home,
                  'fs': entry.fs_type if entry else 'unchecked',
                  'count': len(sizes),
                  'gb': self._provisioned_bytes / units.Gi})
        if self._watch is None:
            self._watch = watch.every(
                self.configuration.fuse_watch_interval, self, 'watch_once',
                'fuse-cinder-watch-%s' % self.backend_name)

    def watch_once(self) -> None:
        """Heal what a replaced mount or a restarted tgtd broke.

        Runs every fuse_watch_interval: the mount id costs a procfs read;
        tgtd's targets are compared with this backend's exports every
        fuse_tgt_reconcile_interval. Nothing is done while the mount is
        not on FUSE (there is nothing to open the files on).
        """
        try:
            self.mount.check_mounted()
        except fuse_mount.FuseMountUnavailable:
            return
        self._heal_luns()
        every = self.configuration.fuse_tgt_reconcile_interval
        now = time.monotonic()
        if every and now - self._last_reconcile >= every:
            self._last_reconcile = now
            restored = self.target_driver.reconcile(self.mount.volumes_home)
            if restored:
                LOG.warning("Re-created %(count)d targets of %(home)s that "
                            "tgtd had lost.",
                            {'count': restored,
                             'home': self.mount.volumes_home})

    @staticmethod
    def _check_name_templates() -> None:
        """The root helper only touches files named as Cinder's defaults."""
        for option, default in (('volume_name_template', 'volume-%s'),
                                ('snapshot_name_template', 'snapshot-%s')):
            value = getattr(cfg.CONF, option)
            if value != default:
                raise exception.InvalidConfigurationValue(
                    option=option, value=value)

    def check_for_setup_error(self) -> None:
        self.mount.check()

    def _count_provisioned(self, delta_bytes: int) -> None:
        with self._provisioned_lock:
            self._provisioned_bytes = max(0,
                                          self._provisioned_bytes +
                                          delta_bytes)

    # -- volume and snapshot life cycle --------------------------------

    def local_path(self, volume: Any) -> str:
        return self.mount.path(volume.name)

    @staticmethod
    def _check_size(size_gb: Optional[int], what: str) -> int:
        if size_gb is None or int(size_gb) <= 0:
            raise exception.InvalidInput(
                reason=_("%(what)s size must be a positive number of GiB, "
                         "not %(size)s") % {'what': what, 'size': size_gb})
        return int(size_gb)

    def create_volume(self, volume: Any) -> None:
        size = self._check_size(volume.size, 'volume')
        LOG.debug("Creating %(name)s (%(size)d GiB)",
                  {'name': volume.name, 'size': size})
        self.files.create(volume.name, size)
        self._count_provisioned(size * units.Gi)

    def delete_volume(self, volume: Any) -> None:
        """Remove the backing file; deleting twice is harmless."""
        old = self.files.delete(volume.name)
        if old is None:
            LOG.info("Volume %s has no backing file, nothing to delete",
                     volume.name)
            return
        self._count_provisioned(-old)

    def extend_volume(self, volume: Any, new_size: int) -> None:
        size = self._check_size(new_size, 'new')
        old = self.files.size(volume.name)
        if old is None:
            raise exception.VolumeBackendAPIException(
                data=_("backing file of %s is missing") % volume.name)
        self.files.extend(volume.name, size)
        self._count_provisioned(size * units.Gi - old)
        if volume.volume_attachment or volume.provider_location:
            self.target_driver.extend_target(volume)

    def create_snapshot(self, snapshot: Any) -> None:
        """Take a sparse copy of the volume's file.

        A volume in use is copied while it may be written to: the copy is
        crash-consistent only, as for any snapshot taken with --force.
        """
        source = snapshot.volume
        if not self.files.exists(source.name):
            raise exception.InvalidVolume(
                reason=_("cannot snapshot %s: its backing file does not "
                         "exist") % source.name)
        self.files.copy(source.name, snapshot.name)
        self._count_provisioned(source.size * units.Gi)

    def delete_snapshot(self, snapshot: Any) -> None:
        old = self.files.delete(snapshot.name)
        if old is not None:
            self._count_provisioned(-old)

    def create_volume_from_snapshot(self, volume: Any,
                                    snapshot: Any) -> None:
        size = self._check_size(volume.size, 'volume')
        if not self.files.exists(snapshot.name):
            raise exception.InvalidSnapshot(
                reason=_("backing file of %s is missing") % snapshot.name)
        self.files.copy(snapshot.name, volume.name, size)
        self._count_provisioned(size * units.Gi)

    def create_cloned_volume(self, volume: Any, src_vref: Any) -> None:
        size = self._check_size(volume.size, 'volume')
        if not self.files.exists(src_vref.name):
            raise exception.InvalidVolume(
                reason=_("cannot clone %s: its backing file does not "
                         "exist") % src_vref.name)
        self.files.copy(src_vref.name, volume.name, size)
        self._count_provisioned(size * units.Gi)

    def revert_to_snapshot(self, context: Any, volume: Any,
                           snapshot: Any) -> None:
        """Put the snapshot's content back, keeping the old until done."""
        old = self.files.size(volume.name) or 0
        self.files.replace(snapshot.name, volume.name)
        if volume.size > snapshot.volume_size:
            self.files.extend(volume.name, volume.size)
        self._count_provisioned((self.files.size(volume.name) or 0) - old)

    # -- migration and retype ------------------------------------------

    def _migration_target(self, volume: Any, host: dict[str, Any]
                          ) -> Optional[fileops.BackingFiles]:
        """The BackingFiles of the destination, when this driver can move.

        Only to another backend of this driver on this machine whose
        volumes_home is on FUSE here, on the filesystem it reported, and
        only for a detached volume. Otherwise None, with the reason
        logged: Cinder's generic migration runs instead.
        """
        def refuse(reason: str,
                   **kw: Any) -> Optional[fileops.BackingFiles]:
            LOG.info("Volume %(vol)s: not moved by the FUSE driver to "
                     "%(host)s (%(reason)s); Cinder's generic migration "
                     "runs.", {'vol': volume.id, 'host': host.get('host'),
                               'reason': reason % kw})
            return None

        status = volume.status
        if status in ('maintenance', 'retyping'):
            status = volume.previous_status
        if status not in _MOVABLE or volume.volume_attachment:
            return refuse('it is %(status)s', status=volume.status)
        info = (host.get('capabilities') or {}).get('location_info')
        fields = info.split(':', 4) if isinstance(info, str) else []
        if len(fields) != 5 or fields[0] != LOCATION_DRIVER:
            return refuse('not a FUSE backend: %(info)s', info=info)
        _driver, machine, device, provisioning, home = fields
        if machine != self.hostname:
            return refuse('on machine %(machine)s', machine=machine)
        if volume_utils.extract_host(host['host'], 'backend') == self.host:
            return refuse('the same backend')
        if (not os.path.isabs(home) or os.path.normpath(home) != home or
                provisioning not in ('thin', 'thick')):
            return refuse('unusable location %(info)s', info=info)
        mine = self.mount
        dest = fuse_mount.FuseMount(
            home, self._execute, mine.fs_call_timeout, mine.copy_timeout,
            mounts_file=mine.mounts_file, mountinfo_file=mine.mountinfo_file)
        entry = dest.entry()
        if entry is None or not entry.is_fuse:
            return refuse('%(home)s is not on FUSE here', home=home)
        here = (dest.device() or 'none').replace(':', '.')
        if here != device:
            return refuse('%(home)s is filesystem %(here)s here, %(there)s '
                          'there', home=home, here=here, there=device)
        return fileops.BackingFiles(dest, sparse=provisioning == 'thin')

    def migrate_volume(self, context: Any, volume: Any,
                       host: dict[str, Any]) -> tuple[bool, None]:
        """Move a detached volume to another FUSE backend of this machine.

        Cinder's generic migration attaches both volumes to this host
        over iSCSI (os-brick, a kernel initiator) and dd's every byte.
        Between two volumes_home of this machine the file is renamed
        when both are on one mount, else copied sparse by the root
        helper (as snapshots and clones) and the source removed: the
        volume keeps its id and file name. Anything else returns
        (False, None), and Cinder's generic path runs.
        """
        dest = self._migration_target(volume, host)
        if dest is None:
            return False, None
        size = self.files.size(volume.name)
        if size is None:
            raise exception.VolumeBackendAPIException(
                data=_("backing file of %s is missing") % volume.name)
        # No LUN may keep the file open: a target left behind would serve
        # the deleted source, and its record would bring it back here.
        self.target_driver.remove_export(context, volume)
        if dest.mount.volumes_home == self.mount.volumes_home:
            how = 'nothing to move: both backends use this directory'
        else:
            same_fs = dest.mount.device() == self.mount.device()
            how = self.files.move_to(volume.name, dest, rename=same_fs)
        self._count_provisioned(-size)
        LOG.info("Volume %(vol)s moved to %(host)s (%(home)s) by the FUSE "
                 "driver: %(how)s.",
                 {'vol': volume.id, 'host': host['host'],
                  'home': dest.mount.volumes_home, 'how': how})
        return True, None

    def retype(self, context: Any, volume: Any, new_type: dict[str, Any],
               diff: dict[str, Any],
               host: dict[str, Any]) -> tuple[bool, None]:
        """Take the new type on this backend: nothing to change.

        Cinder calls this only when the new type stays on this backend;
        the driver acts on no extra spec (provisioning is the backend's)
        and offers no back-end QoS, so there is nothing to do, as with
        LVM. A new type on another backend is a migration, which Cinder
        then asks of migrate_volume.
        """
        if volume_utils.extract_host(host['host'], 'backend') != self.host:
            return False, None
        return True, None

    # -- images: straight to and from the local file --------------------

    def copy_image_to_volume(self, context: Any, volume: Any,
                             image_service: Any, image_id: str,
                             disable_sparse: bool = False) -> None:
        """Write the image into the file directly, never over iSCSI."""
        image_utils.fetch_to_raw(context, image_service, image_id,
                                 self.local_path(volume),
                                 self.configuration.volume_dd_blocksize,
                                 size=volume.size,
                                 disable_sparse=disable_sparse,
                                 run_as_root=True)
        # qemu-img writes the image's own size; give the volume its size.
        self.files.extend(volume.name, volume.size)

    def copy_volume_to_image(self, context: Any, volume: Any,
                             image_service: Any,
                             image_meta: dict[str, Any]) -> None:
        """Upload from a local copy that a bounded child made.

        Cinder's upload opens a raw volume's file inside cinder-volume,
        where a hung FUSE daemon would freeze the service (DESIGN.rst).
        The copy is sparse and lives in image_conversion_dir.
        """
        with image_utils.temporary_file(prefix='fuse_upload_') as tmp:
            self.mount.read_into(volume.name, tmp)
            volume_utils.upload_volume(context, image_service, image_meta,
                                       tmp, volume, run_as_root=False)

    # -- statistics ----------------------------------------------------

    def _update_volume_stats(self) -> None:
        """Capacity from one statvfs, provisioned from the running count.

        A dead, hung or missing mount reports the backend down with no
        free space, so the scheduler sends nothing here until it is back;
        once it is, the LUNs are healed (see _heal_luns).
        """
        conf = self.configuration
        data: dict[str, Any] = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'Open Source',
            'driver_version': self.VERSION,
            'storage_protocol': constants.ISCSI,
            'reserved_percentage': conf.reserved_percentage,
            'thin_provisioning_support': conf.fuse_sparse_volumes,
            'thick_provisioning_support': not conf.fuse_sparse_volumes,
            'max_over_subscription_ratio':
                volume_utils.get_max_over_subscription_ratio(
                    conf.max_over_subscription_ratio, supports_auto=False),
            'provisioned_capacity_gb':
                round(self._provisioned_bytes / units.Gi, 2),
            'sparse_copy_volume': True,
            'multiattach': True,
            'QoS_support': False,
            'shared_targets': False,
            # os-export / os-delete-export (fuse_cinder/patches): the
            # patched Cinder API sends them only to backends reporting
            # this, and exports read-only volumes only where the second
            # one is true.
            'fuse_cinder_export': True,
            'fuse_cinder_export_readonly': True,
            'location_info': self._location_info(),
        }
        try:
            total, avail = self.mount.shared_capacity()
        except exception.VolumeBackendAPIException as exc:
            LOG.error("Reporting backend %(backend)s down: %(err)s",
                      {'backend': self.backend_name, 'err': exc})
            data.update(total_capacity_gb=0, free_capacity_gb=0,
                        backend_state='down')
            self._backend_down = True
        else:
            data.update(total_capacity_gb=round(total / units.Gi, 2),
                        free_capacity_gb=round(avail / units.Gi, 2),
                        backend_state='up')
            if self._backend_down:
                LOG.info("FUSE mount of backend %s answers again.",
                         self.backend_name)
                self._backend_down = False
            self._heal_luns()
        self._stats = data

    def _location_info(self) -> str:
        """Where this backend keeps its files, for a migration to it.

        ``FuseISCSIDriver:<machine>:<device>:<thin|thick>:<volumes_home>``
        (volumes_home last, as it may hold a colon). The machine is the
        host name, as for LVM; the device is the number of the filesystem
        under volumes_home (procfs, never blocks; ``major.minor``), which
        a source on this machine compares with its own view of that path.
        """
        device = (self.mount.device() or 'none').replace(':', '.')
        return ':'.join((LOCATION_DRIVER, self.hostname, device,
                         self.files.provisioning, self.mount.volumes_home))

    def _heal_luns(self) -> None:
        """Re-open the LUNs in tgtd once the mount was replaced.

        tgtd keeps the file handles it opened on a FUSE mount whose daemon
        died, and they fail every I/O even after the filesystem is mounted
        again. A remount gives the mount a new id in the kernel, so a
        changed id (read from procfs, free) is what triggers the re-open,
        also when the remount was too quick for a statistics update to see
        the backend down; a daemon that was only slow keeps its mount and
        its LUNs are left alone. A failure is retried at the next update.
        """
        if not self._heal_lock.acquire(blocking=False):
            return                          # the other caller is at it
        try:
            self._heal_luns_locked()
        finally:
            self._heal_lock.release()

    def _heal_luns_locked(self) -> None:
        current = self.mount.identity()
        if self._luns_mount_id is None:     # no baseline before do_setup
            self._luns_mount_id = current
        if current == self._luns_mount_id:
            return
        LOG.warning("FUSE mount of %(home)s was replaced (mount id %(old)s "
                    "-> %(new)s); re-opening its LUNs in tgtd.",
                    {'home': self.mount.volumes_home,
                     'old': self._luns_mount_id, 'new': current})
        try:
            count = self.target_driver.reopen_all(self.mount.volumes_home)
        except exception.CinderException as exc:
            LOG.error("Re-opening the LUNs on %(home)s failed; retrying "
                      "soon: %(err)s",
                      {'home': self.mount.volumes_home, 'err': exc})
            return
        self._luns_mount_id = current
        LOG.info("Re-opened %(count)d LUNs on %(home)s.",
                 {'count': count, 'home': self.mount.volumes_home})

    # -- manage / unmanage ---------------------------------------------

    @staticmethod
    def _gib(size_bytes: int) -> int:
        """Whole GiB, rounded up, as Cinder counts a managed object."""
        return max(1, int(math.ceil(size_bytes / units.Gi)))

    def _managed_name(self, obj: Any, existing_ref: Optional[dict[str, Any]],
                      kind: str) -> str:
        """The file an existing_ref names, if it is safely ours to take.

        ``obj`` is the volume or snapshot (``kind``) that is to own it.
        Only a regular file directly inside volumes_home qualifies: no
        directories, no '..', no absolute path, no symlink that could point
        anywhere else on the host. Nor a file Cinder still owns (see
        _cinder_owner).
        """
        name = existing_ref.get('source-name') if existing_ref else None
        if not name or not isinstance(name, str):
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('source-name, a file name inside volumes_home, '
                         'is required'))
        if not names.is_plain(name):
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('source-name must be a plain file name inside '
                         'volumes_home, without directories'))
        file_kind = self.files.file_type(name)
        if file_kind != 'regular':
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=(_('%(name)s is a %(kind)s, not a regular file') %
                        {'name': name, 'kind': file_kind}) if file_kind else
                _('no file %s in volumes_home') % name)
        owner = self._cinder_owner(obj, name, kind)
        if owner:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('%(name)s belongs to %(owner)s') %
                {'name': name, 'owner': owner})
        return name

    def _managed_file(self, obj: Any, existing_ref: Optional[dict[str, Any]],
                      kind: str) -> tuple[str, int]:
        """The name _managed_name took and its size in bytes.

        A file removed since it was checked is refused the same way.
        """
        name = self._managed_name(obj, existing_ref, kind)
        size = self.files.size(name)
        if size is None:
            raise exception.ManageExistingInvalidReference(
                existing_ref=existing_ref,
                reason=_('no file %s in volumes_home') % name)
        return name, size

    @staticmethod
    def _record(ctxt: Any, kind: str, obj_id: str) -> Any:
        """Cinder's record of the volume or snapshot ``obj_id``, or None.

        Whether a deleted record counts is the context's read_deleted.
        """
        if kind == 'volume':
            cls, missing = objects.Volume, exception.VolumeNotFound
        else:
            cls, missing = objects.Snapshot, exception.SnapshotNotFound
        try:
            return cls.get_by_id(ctxt, obj_id)
        except missing:
            return None

    def _cinder_owner(self, obj: Any, name: str, kind: str) -> Optional[str]:
        """What in Cinder still owns the file ``name``, or None.

        The driver's temporaries and probes are its own. A file named as
        Cinder names the other kind of object (a snapshot's file for a
        volume, a volume's for a snapshot) is that object's. One named as
        this kind belongs to the object of that id while Cinder knows it;
        once Cinder forgot it (unmanaged, or from another deployment) the
        file is free.
        """
        if name == obj.name:
            return None
        if names.is_owned(name) and not names.is_object(name):
            return _('the driver (a temporary file)')
        if not names.is_object(name):
            return None
        if kind == 'volume' and name.startswith(names.SNAPSHOT_PREFIX):
            return _('a snapshot')
        if kind == 'snapshot' and name.startswith(names.VOLUME_PREFIX):
            return _('a volume')
        obj_id = name.split('-', 1)[1]
        ctxt = obj._context or context.get_admin_context()
        if self._record(ctxt, kind, obj_id) is None:
            return None
        return _('%(kind)s %(id)s') % {'kind': kind, 'id': obj_id}

    def _take_file(self, obj: Any, existing_ref: Optional[dict[str, Any]],
                   kind: str, size_gb: Optional[int] = None) -> None:
        """Rename the referenced file to ``obj``'s and grow it to size.

        ``size_gb`` defaults to the file's size rounded up, which is what
        the size call told Cinder: a volume made from the snapshot, or
        reverted to it, then gets exactly that many GiB.
        """
        name, size = self._managed_file(obj, existing_ref, kind)
        if name != obj.name:
            self.files.rename(name, obj.name)
        size_gb = size_gb or self._gib(size)
        if size < size_gb * units.Gi:
            self.files.extend(obj.name, size_gb)
        self._count_provisioned(max(size, size_gb * units.Gi))

    def _release_file(self, obj: Any) -> None:
        """Leave the file as it is, as Cinder's other drivers do."""
        size = self.files.size(obj.name)
        if size is not None:
            self._count_provisioned(-size)

    def manage_existing(
            self, volume: Any, existing_ref: Optional[dict[str, Any]]) -> None:
        self._take_file(volume, existing_ref, 'volume', volume.size)

    def manage_existing_get_size(
            self, volume: Any, existing_ref: Optional[dict[str, Any]]) -> int:
        return self._gib(
            self._managed_file(volume, existing_ref, 'volume')[1])

    def unmanage(self, volume: Any) -> None:
        """Keep the file under its name; it can be managed back by it.

        Once Cinder has forgotten the volume, its ``volume-<id>`` is listed
        as safe to manage again (Tempest's manage_volume_ref is
        ``source-name,volume-%s``).
        """
        self._release_file(volume)

    def manage_existing_snapshot(
            self, snapshot: Any,
            existing_ref: Optional[dict[str, Any]]) -> None:
        """Take a file as the snapshot's, renamed to ``snapshot-<id>``.

        Any plain file will do (a snapshot is a full sparse copy here),
        but never a ``volume-<id>`` file, the parent's included.
        """
        self._take_file(snapshot, existing_ref, 'snapshot')

    def manage_existing_snapshot_get_size(
            self, snapshot: Any,
            existing_ref: Optional[dict[str, Any]]) -> int:
        return self._gib(
            self._managed_file(snapshot, existing_ref, 'snapshot')[1])

    def unmanage_snapshot(self, snapshot: Any) -> None:
        """Keep the file as ``snapshot-<id>``, listed as manageable again.

        Tempest manages it back with manage_snapshot_ref set to
        ``source-name,snapshot-%s``; its default, ``_snapshot-%s``, is
        the LVM driver's escaped LV name.
        """
        self._release_file(snapshot)

    def _manageable_entry(self, name: str, size: int,
                          cinder_id: Optional[str]) -> dict[str, Any]:
        """One entry of a manageable listing; safe unless Cinder has it."""
        safe = cinder_id is None
        return {
            'reference': {'source-name': name},
            'size': self._gib(size),
            'safe_to_manage': safe,
            'reason_not_safe': None if safe else _('already managed'),
            'cinder_id': cinder_id,
            'extra_info': None,
        }

    def get_manageable_volumes(self, cinder_volumes: list[Any],
                               marker: Optional[dict[str, Any] | str],
                               limit: int, offset: Optional[int],
                               sort_keys: list[str],
                               sort_dirs: list[str]) -> list[dict[str, Any]]:
        """volume- files and operators' files; never snapshots or temps."""
        managed = {vol.name for vol in cinder_volumes}
        entries = []
        for name, size in sorted(self.files.list_sizes().items()):
            if (name.startswith(names.SNAPSHOT_PREFIX) or
                    (names.is_owned(name) and not names.is_object(name))):
                continue
            entries.append(self._manageable_entry(
                name, size, name[len(names.VOLUME_PREFIX):]
                if name in managed else None))
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)

    def get_manageable_snapshots(self, cinder_snapshots: list[Any],
                                 marker: Optional[dict[str, Any] | str],
                                 limit: int, offset: Optional[int],
                                 sort_keys: list[str],
                                 sort_dirs: list[str]) -> list[dict[str, Any]]:
        """The ``snapshot-<id>`` files, each with its parent volume.

        A file holds no trace of its parent: Cinder does, in the
        snapshot's record, which unmanage only marks deleted. So a file
        whose record is deleted is safe to manage, with that record's
        volume as ``source_reference``; one Cinder still knows (on this
        host or another sharing the directory) is not; one Cinder never
        knew has an unknown source (``source-name`` None). Other plain
        files are in the volume listing; they can still be managed as
        snapshots by name.
        """
        mine = {snap.name: snap for snap in cinder_snapshots}
        ctxt = context.get_admin_context(read_deleted='yes')
        entries = []
        for name, size in sorted(self.files.list_sizes().items()):
            if not (name.startswith(names.SNAPSHOT_PREFIX) and
                    names.is_object(name)):
                continue
            snap_id = name[len(names.SNAPSHOT_PREFIX):]
            record = mine.get(name)
            if record is None:
                record = self._record(ctxt, 'snapshot', snap_id)
            known = record is not None and not record.deleted
            entry = self._manageable_entry(name, size,
                                           snap_id if known else None)
            entry['source_reference'] = {'source-name': (
                names.VOLUME_PREFIX + record.volume_id
                if record is not None else None)}
            entries.append(entry)
        return volume_utils.paginate_entries_list(
            entries, marker, limit, offset, sort_keys, sort_dirs)

    # -- iSCSI export: delegated to the tgt helper ---------------------

    def _check_mount_answers(self) -> None:
        """The mount answers a bounded look; one per ensure burst.

        cinder-volume calls ensure_export for every volume at start-up;
        one look within ENSURE_MOUNT_TTL serves them all.
        """
        seen = self._mount_seen_alive
        if seen is not None and time.monotonic() - seen <= ENSURE_MOUNT_TTL:
            return
        self.mount.check_answers()
        self._mount_seen_alive = time.monotonic()

    def create_export(self, context: Any, volume: Any,
                      connector: Optional[dict[str, Any]]) -> dict[str, Any]:
        """Export with the connector so the target is never open to all.

        A connector with ``access_mode`` 'ro' (os-export of a volume whose
        admin metadata says readonly=True) gets a read-only LUN. The
        mount must answer a look first (shared with the exports asking
        meanwhile): tgtd would re-use a target whose LUN fails every I/O
        on a dead mount, and its own open of a file on a hung one blocks
        tgtd. tgtd's open proves the file is there (the target code
        checks that LUN 1 holds the volume's own file); when the export
        fails, a look at the file names the cause.
        """
        self.mount.check_answers()
        readonly = bool(connector and connector.get('access_mode') == 'ro')
        try:
            data = self.target_driver.create_export(context, volume,
                                                    self.local_path(volume),
                                                    connector=connector,
                                                    readonly=readonly)
        except Exception as err:
            # A bounded stat: fails naming the mount if it is dead or hung.
            if not self.files.exists(volume.name):
                raise exception.VolumeBackendAPIException(
                    data=_("cannot export %(name)s: no backing file in "
                           "%(home)s") % {'name': volume.name,
                                          'home': self.mount.volumes_home}
                ) from err
            raise
        return {'provider_location': data['location'],
                'provider_auth': data['auth']}

    def ensure_export(self, context: Any,
                      volume: Any) -> Optional[dict[str, Any]]:
        """Re-create a lost target; may return new CHAP to persist."""
        self._check_mount_answers()
        return self.target_driver.ensure_export(context, volume,
                                                self.local_path(volume))

    def remove_export(self, context: Any, volume: Any) -> None:
        self.target_driver.remove_export(context, volume)

    def initialize_connection(self, volume: Any, connector: dict[str, Any],
                              initiator_data: Optional[dict[str, Any]] = None
                              ) -> dict[str, Any]:
        return self.target_driver.initialize_connection(volume, connector)

    def terminate_connection(self, volume: Any,
                             connector: Optional[dict[str, Any]],
                             **kwargs: Any) -> bool:
        return self.target_driver.terminate_connection(volume, connector,
                                                       **kwargs)

    def validate_connector(self, connector: dict[str, Any]) -> bool:
        return self.target_driver.validate_connector(connector)
