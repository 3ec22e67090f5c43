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
"""The driver's volume life cycle against the fake executor."""

import gc
import os
import subprocess
import threading
import time
from unittest import mock

from oslo_config import cfg
import pytest

from cinder import context
from cinder import exception
from cinder.tests.unit import fake_snapshot
from cinder.tests.unit import fake_volume

from fuse_cinder import mount
from fuse_cinder import mount_table
from fuse_cinder.privileged import tgt as priv_tgt
from tests.unit import conftest
from tests.unit import fake_executor

GiB = 1 << 30
CTX = context.get_admin_context()
VOL_ID = '11111111-2222-3333-4444-555555555555'
VOL2_ID = '66666666-2222-3333-4444-555555555555'
SNAP_ID = '77777777-2222-3333-4444-555555555555'


def volume(size=1, vol_id=VOL_ID, **kw):
    return fake_volume.fake_volume_obj(CTX, id=vol_id, size=size, **kw)


def snapshot(vol, snap_id=SNAP_ID):
    snap = fake_snapshot.fake_snapshot_obj(CTX, id=snap_id,
                                           volume_id=vol.id,
                                           volume_size=vol.size)
    snap.volume = vol
    return snap


def path(name):
    return '%s/%s' % (conftest.HOME, name)


def leftovers(fake_fs):
    """Files that are neither volumes nor snapshots (temps, probes)."""
    return [n for n in fake_fs.names()
            if not n.startswith(('volume-', 'snapshot-'))]


# -- setup -------------------------------------------------------------

def test_setup_counts_existing_files_once(make_driver, fake_fs):
    fake_fs.add('volume-' + VOL_ID, 2 * GiB)
    fake_fs.add('snapshot-' + SNAP_ID, 1 * GiB)
    fake_fs.add('volume-notes.txt', 5)
    drv = make_driver()
    drv.do_setup(CTX)
    assert fake_fs.programs().count('list') == 1
    assert drv._provisioned_bytes == 3 * GiB
    assert leftovers(fake_fs) == []


def test_setup_refuses_non_fuse_mount(make_driver, mounts_file):
    mounts_file.write_text('/dev/vda / ext4 rw 0 0\n')
    drv = make_driver()
    with pytest.raises(mount.FuseMountUnavailable) as err:
        drv.do_setup(CTX)
    assert conftest.HOME in str(err.value)
    assert 'not on a FUSE filesystem' in str(err.value)


def test_setup_allows_plain_dir_when_check_disabled(make_driver,
                                                    mounts_file):
    mounts_file.write_text('/dev/vda / ext4 rw 0 0\n')
    drv = make_driver(fuse_check_mount=False)
    drv.do_setup(CTX)


def test_setup_refuses_mount_hidden_from_root(make_driver, mounts_file):
    mounts_file.write_text(conftest.FUSE_LINE.replace(',allow_other', ''))
    drv = make_driver()
    with pytest.raises(mount.FuseMountUnavailable) as err:
        drv.do_setup(CTX)
    assert 'allow_other' in str(err.value)


def test_setup_names_dead_mount(make_driver, fake_fs):
    fake_fs.fail('statfs', "fuse-cinder-files: statfs in %s: %s" %
                 (conftest.HOME, fake_executor.ENOTCONN))
    drv = make_driver()
    with pytest.raises(mount.FuseMountUnavailable) as err:
        drv.do_setup(CTX)
    assert conftest.HOME in str(err.value)
    assert 'ENOTCONN' in str(err.value)


@pytest.mark.parametrize('code', [137, -9])
def test_setup_names_hung_mount(make_driver, fake_fs, code):
    """137, or -9 when timeout's own KILL to its group ended it too."""
    fake_fs.fail('statfs', '', exit_code=code)
    drv = make_driver(fuse_fs_call_timeout=7)
    with pytest.raises(mount.FuseMountUnavailable) as err:
        drv.do_setup(CTX)
    assert 'within 7 s' in str(err.value)


def test_unkillable_call_is_abandoned(drv, fake_fs):
    fake_fs.unkillable = True
    with pytest.raises(mount.FuseMountUnavailable) as err:
        drv.create_volume(volume())
    assert 'could not be killed' in str(err.value)
    stats = drv.get_volume_stats(refresh=True)
    assert stats['backend_state'] == 'down'


def test_setup_refuses_read_only_mount(make_driver, fake_fs):
    fake_fs.fail('probe', 'fuse-cinder-files: probe in %s: Read-only file '
                 'system' % conftest.HOME)
    drv = make_driver()
    with pytest.raises(mount.FuseMountUnavailable) as err:
        drv.do_setup(CTX)
    assert 'cannot create files' in str(err.value)


def test_every_mount_command_is_bounded_and_root(drv, fake_fs):
    seen = []

    def spy(*cmd, **kwargs):
        seen.append((cmd, kwargs))
        return fake_fs(*cmd, **kwargs)
    drv.mount._execute = spy
    vol = volume()
    drv.create_volume(vol)
    drv.extend_volume(vol, 2)
    drv.create_snapshot(snapshot(vol))
    drv.delete_volume(vol)
    assert seen
    for cmd, kwargs in seen:
        assert cmd[:3] == ('timeout', '-s', 'KILL'), cmd
        assert kwargs['run_as_root'] is True


# -- create / delete / extend --------------------------------------------

def test_create_volume_is_one_exclusive_sparse_create(drv, fake_fs):
    vol = volume(size=1024)
    fake_fs.calls.clear()
    drv.create_volume(vol)
    assert fake_fs.files[path(vol.name)] == 1024 * GiB
    assert fake_fs.calls == [['fuse-cinder-files', 'create', conftest.HOME,
                              vol.name, str(1024 * GiB), 'thin']]
    assert leftovers(fake_fs) == []
    assert drv._provisioned_bytes == 1024 * GiB


def test_create_thick_volume_allocates(make_driver, fake_fs):
    drv = make_driver(fuse_sparse_volumes=False)
    drv.do_setup(CTX)
    fake_fs.calls.clear()
    drv.create_volume(volume())
    assert fake_fs.calls[0][1] == 'create'
    assert fake_fs.calls[0][-1] == 'thick'


@pytest.mark.parametrize('size', [0, -1, None])
def test_create_refuses_bad_size(drv, fake_fs, size):
    vol = volume()
    vol.size = size
    fake_fs.calls.clear()
    with pytest.raises(exception.InvalidInput):
        drv.create_volume(vol)
    assert fake_fs.calls == []


def test_create_refuses_existing_file(drv, fake_fs):
    vol = volume()
    fake_fs.add(vol.name, 5 * GiB)
    with pytest.raises(exception.VolumeBackendAPIException) as err:
        drv.create_volume(vol)
    assert 'already exists' in str(err.value)
    assert fake_fs.files[path(vol.name)] == 5 * GiB


def test_create_enospc_leaves_nothing(drv, fake_fs):
    fake_fs.fail('create', "fuse-cinder-files: create volume-x in %s: %s"
                 % (conftest.HOME, fake_executor.ENOSPC))
    with pytest.raises(mount.FuseNoSpace):
        drv.create_volume(volume())
    assert fake_fs.names() == []
    assert drv._provisioned_bytes == 0


def test_delete_is_idempotent(drv, fake_fs):
    vol = volume(size=3)
    drv.create_volume(vol)
    fake_fs.calls.clear()
    drv.delete_volume(vol)
    # One command: the helper's delete says how many bytes it removed.
    assert [c[1] for c in fake_fs.calls] == ['delete']
    drv.delete_volume(vol)
    assert fake_fs.names() == []
    assert drv._provisioned_bytes == 0


def test_extend_grows_and_refuses_shrink(drv, fake_fs):
    vol = volume(size=2)
    drv.create_volume(vol)
    drv.extend_volume(vol, 5)
    assert fake_fs.files[path(vol.name)] == 5 * GiB
    assert drv._provisioned_bytes == 5 * GiB
    with pytest.raises(exception.InvalidInput):
        drv.extend_volume(vol, 3)
    assert fake_fs.files[path(vol.name)] == 5 * GiB


def test_extend_missing_volume(drv):
    with pytest.raises(exception.VolumeBackendAPIException):
        drv.extend_volume(volume(), 2)


def test_extend_of_exported_volume_refreshes_target(drv):
    vol = volume(size=1, provider_location='127.0.0.1:3260,1 iqn.x 1')
    drv.create_volume(vol)
    with mock.patch.object(drv.target_driver, 'extend_target') as ext:
        drv.extend_volume(vol, 2)
    ext.assert_called_once_with(vol)


# -- snapshots and clones ------------------------------------------------

def test_snapshot_is_sparse_copy_without_temp_leftovers(drv, fake_fs):
    vol = volume(size=10)
    drv.create_volume(vol)
    snap = snapshot(vol)
    drv.create_snapshot(snap)
    assert fake_fs.files[path(snap.name)] == 10 * GiB
    copy = [c for c in fake_fs.calls if c[1] == 'copy'][0]
    assert copy == ['fuse-cinder-files', 'copy', conftest.HOME, vol.name,
                    copy[4], 'thin']
    assert copy[4].startswith('.fuse_cinder_tmp-' + snap.name)
    assert leftovers(fake_fs) == []


def test_thick_copies_write_every_block(make_driver, fake_fs):
    drv = make_driver(fuse_sparse_volumes=False)
    drv.do_setup(None)
    vol = volume(size=1)
    drv.create_volume(vol)
    drv.create_snapshot(snapshot(vol))
    copy = [c for c in fake_fs.calls if c[1] == 'copy'][0]
    assert copy[-1] == 'thick'


def test_snapshot_of_missing_volume(drv, fake_fs):
    vol = volume()
    with pytest.raises(exception.InvalidVolume):
        drv.create_snapshot(snapshot(vol))
    assert fake_fs.names() == []


def test_clone_enospc_leaves_no_partial_file(drv, fake_fs):
    src = volume(size=1)
    drv.create_volume(src)
    fake_fs.fail('copy', 'fuse-cinder-files: copy a in b: %s' %
                 fake_executor.ENOSPC)
    with pytest.raises(mount.FuseNoSpace):
        drv.create_cloned_volume(volume(vol_id=VOL2_ID), src)
    assert fake_fs.names() == [src.name]
    assert drv._provisioned_bytes == 1 * GiB


def test_clone_to_larger_size(drv, fake_fs):
    src = volume(size=1)
    drv.create_volume(src)
    dst = volume(size=4, vol_id=VOL2_ID)
    drv.create_cloned_volume(dst, src)
    assert fake_fs.files[path(dst.name)] == 4 * GiB
    assert drv._provisioned_bytes == 5 * GiB


def test_volume_from_snapshot(drv, fake_fs):
    src = volume(size=2)
    drv.create_volume(src)
    snap = snapshot(src)
    drv.create_snapshot(snap)
    dst = volume(size=2, vol_id=VOL2_ID)
    drv.create_volume_from_snapshot(dst, snap)
    assert fake_fs.files[path(dst.name)] == 2 * GiB
    drv.delete_snapshot(snap)
    drv.delete_snapshot(snap)
    assert path(snap.name) not in fake_fs.files


def test_volume_from_missing_snapshot(drv, fake_fs):
    src = volume(size=2)
    with pytest.raises(exception.InvalidSnapshot):
        drv.create_volume_from_snapshot(volume(vol_id=VOL2_ID),
                                        snapshot(src))


def test_revert_keeps_old_content_on_failure(drv, fake_fs):
    vol = volume(size=2)
    drv.create_volume(vol)
    snap = snapshot(vol)
    drv.create_snapshot(snap)
    fake_fs.fail('copy', 'fuse-cinder-files: copy a in b: %s' %
                 fake_executor.ENOSPC)
    with pytest.raises(mount.FuseNoSpace):
        drv.revert_to_snapshot(CTX, vol, snap)
    assert sorted(fake_fs.names()) == sorted([vol.name, snap.name])


def test_revert_replaces_by_rename(drv, fake_fs):
    vol = volume(size=2)
    drv.create_volume(vol)
    snap = snapshot(vol)
    drv.create_snapshot(snap)
    fake_fs.files[path(vol.name)] = 3 * GiB     # grown since the snapshot
    drv._provisioned_bytes += GiB
    fake_fs.calls.clear()
    drv.revert_to_snapshot(CTX, vol, snap)
    copies = [p for p in fake_fs.programs() if p in ('copy', 'rename')]
    assert copies == ['copy', 'rename']
    assert leftovers(fake_fs) == []
    assert fake_fs.files[path(vol.name)] == 2 * GiB
    assert drv._provisioned_bytes == 4 * GiB


# -- statistics ------------------------------------------------------------

def test_stats_report_capacity_and_provisioning(drv, fake_fs):
    drv.create_volume(volume(size=30))
    stats = drv.get_volume_stats(refresh=True)
    assert stats['total_capacity_gb'] == 100
    assert stats['free_capacity_gb'] == 80
    assert stats['provisioned_capacity_gb'] == 30
    assert stats['thin_provisioning_support'] is True
    assert stats['backend_state'] == 'up'
    assert stats['storage_protocol'] == 'iSCSI'
    assert stats['volume_backend_name'] == 'fuse-test'


def test_stats_offer_multiattach_on_one_target_per_volume(drv, fake_fs):
    stats = drv.get_volume_stats(refresh=True)
    # a multiattach volume type's volumes may be scheduled here
    assert stats['multiattach'] is True
    assert stats['shared_targets'] is False


def test_terminate_connection_reports_shared_connections(drv):
    # Cinder's attachment delete calls remove_export only on False.
    vol = volume()
    with mock.patch.object(drv.target_driver, 'terminate_connection',
                           return_value=True) as term:
        assert drv.terminate_connection(vol, {'initiator': 'x'}) is True
    term.assert_called_once_with(vol, {'initiator': 'x'})


def test_stats_cost_does_not_grow_with_volumes(drv, fake_fs):
    for i in range(50):
        fake_fs.add('volume-%04d' % i, GiB)
    fake_fs.calls.clear()
    drv.get_volume_stats(refresh=True)
    assert len(fake_fs.calls) == 1


def test_stats_report_dead_mount_as_down(drv, fake_fs):
    fake_fs.fail('statfs', fake_executor.ENOTCONN)
    stats = drv.get_volume_stats(refresh=True)
    assert stats['backend_state'] == 'down'
    assert stats['free_capacity_gb'] == 0


def test_stats_report_unmounted_fuse_as_down(drv, fake_fs, mounts_file):
    # The daemon was stopped and unmounted: volumes_home is now a plain
    # directory of the root filesystem, which statvfs would happily size.
    mounts_file.write_text('/dev/vda / ext4 rw 0 0\n')
    fake_fs.calls.clear()
    stats = drv.get_volume_stats(refresh=True)
    assert stats['backend_state'] == 'down'
    assert stats['total_capacity_gb'] == 0
    assert fake_fs.calls == []


# -- recovery: LUNs re-opened when the mount comes back ------------------

MOUNTINFO = ('27 1 254:1 / / rw - ext4 /dev/vda rw\n'
             '%d 27 0:41 / /mnt/cdmi rw,nosuid - fuse.cdmifuse cdmifuse '
             'rw,user_id=1000,allow_other\n')


@pytest.fixture
def healing(make_driver, tmp_path):
    """A driver with its own mountinfo; remount() plays a new mount."""
    info = tmp_path / 'mountinfo'
    info.write_text(MOUNTINFO % 40)
    d = make_driver()
    d.mount.mountinfo_file = str(info)
    d.do_setup(CTX)
    ids = iter(range(41, 100))

    def remount():
        info.write_text(MOUNTINFO % next(ids))
    with mock.patch.object(d.target_driver, 'reopen_all',
                           return_value=3) as reopen:
        yield d, remount, reopen


def test_mount_identity_is_the_innermost_mount(healing):
    drv, remount, _reopen = healing
    assert drv.mount.identity() == 40
    remount()
    assert drv.mount.identity() == 41


def test_luns_are_reopened_once_after_a_remount(healing):
    drv, remount, reopen = healing
    drv.get_volume_stats(refresh=True)
    reopen.assert_not_called()
    remount()
    assert drv.get_volume_stats(refresh=True)['backend_state'] == 'up'
    reopen.assert_called_once_with(conftest.HOME)
    drv.get_volume_stats(refresh=True)
    assert reopen.call_count == 1


def test_dead_then_remounted_mount_reopens_luns(healing, fake_fs):
    drv, remount, reopen = healing
    fake_fs.fail('statfs', fake_executor.ENOTCONN)
    assert drv.get_volume_stats(refresh=True)['backend_state'] == 'down'
    reopen.assert_not_called()          # nothing to open the files on
    remount()
    fake_fs.failures.clear()
    assert drv.get_volume_stats(refresh=True)['backend_state'] == 'up'
    reopen.assert_called_once_with(conftest.HOME)


def test_a_slow_daemon_keeps_its_luns(healing, fake_fs):
    """Same mount after a hang: tgtd's handles are fine, no re-open."""
    drv, _remount, reopen = healing
    fake_fs.fail('statfs', '', exit_code=137)
    assert drv.get_volume_stats(refresh=True)['backend_state'] == 'down'
    fake_fs.failures.clear()
    assert drv.get_volume_stats(refresh=True)['backend_state'] == 'up'
    reopen.assert_not_called()


def test_failed_reopen_is_retried_at_the_next_update(healing):
    drv, remount, reopen = healing
    remount()
    reopen.side_effect = [exception.TargetUpdateFailed(volume_id='v'), 2]
    assert drv.get_volume_stats(refresh=True)['backend_state'] == 'up'
    drv.get_volume_stats(refresh=True)
    drv.get_volume_stats(refresh=True)
    assert reopen.call_count == 2


# -- manage / unmanage ----------------------------------------------------

UNSAFE_REFS = [
    {}, {'source-name': ''}, {'source-name': '../etc/passwd'},
    {'source-name': '/etc/passwd'}, {'source-name': 'sub/file'},
    {'source-name': '..'}, {'source-name': 'link'}, {'source-name': 'dir'},
    {'source-name': 'missing'}, {'source-id': 'x'},
]


@pytest.mark.parametrize('ref', UNSAFE_REFS)
def test_manage_refuses_unsafe_references(drv, fake_fs, ref):
    fake_fs.add('link', kind='symlink')
    fake_fs.add('dir', kind='directory')
    with pytest.raises(exception.ManageExistingInvalidReference):
        drv.manage_existing_get_size(volume(), ref)
    with pytest.raises(exception.ManageExistingInvalidReference):
        drv.manage_existing(volume(), ref)


def test_manage_renames_and_rounds_size_up(drv, fake_fs):
    fake_fs.add('legacy.img', GiB + 1)
    vol = volume(size=2)
    ref = {'source-name': 'legacy.img'}
    assert drv.manage_existing_get_size(vol, ref) == 2
    drv.manage_existing(vol, ref)
    assert fake_fs.names() == [vol.name]
    assert fake_fs.files[path(vol.name)] == 2 * GiB
    assert drv._provisioned_bytes == 2 * GiB


@pytest.mark.parametrize('call', ['manage_existing_get_size',
                                  'manage_existing',
                                  'manage_existing_snapshot_get_size'])
def test_manage_refuses_a_file_removed_after_its_check(drv, fake_fs, call):
    """Gone between its type check and its size: refused, no TypeError."""
    fake_fs.add('legacy.img', GiB)
    file_type = drv.files.file_type

    def checked_then_removed(name):
        kind = file_type(name)
        del fake_fs.files[path(name)]
        return kind
    obj = snapshot(volume()) if 'snapshot' in call else volume()
    with mock.patch.object(drv.files, 'file_type', checked_then_removed):
        with pytest.raises(exception.ManageExistingInvalidReference) as err:
            getattr(drv, call)(obj, {'source-name': 'legacy.img'})
    assert 'legacy.img' in str(err.value)
    assert fake_fs.names() == []
    assert drv._provisioned_bytes == 0


def test_unmanage_keeps_the_data(drv, fake_fs):
    vol = volume(size=1)
    drv.create_volume(vol)
    drv.unmanage(vol)
    assert fake_fs.names() == [vol.name]
    assert drv._provisioned_bytes == 0


def test_unmanaged_volume_is_managed_back_by_its_name(drv, fake_fs):
    """Tempest's flow: unmanage, then manage 'volume-<old id>' again."""
    old = volume(size=1)
    drv.create_volume(old)
    drv.unmanage(old)
    listing = drv.get_manageable_volumes([], None, 10, 0, ['size'], ['asc'])
    assert [(e['reference'], e['safe_to_manage']) for e in listing] == [
        ({'source-name': old.name}, True)]
    new = volume(size=1, vol_id=VOL2_ID)
    with mock.patch('cinder.objects.Volume.get_by_id',
                    side_effect=exception.VolumeNotFound(volume_id=VOL_ID)):
        drv.manage_existing(new, {'source-name': old.name})
    assert fake_fs.names() == [new.name]
    assert drv._provisioned_bytes == GiB


def test_manageable_listing(drv, fake_fs):
    managed = volume(size=1)
    drv.create_volume(managed)
    fake_fs.add('legacy.img', 3 * GiB)
    fake_fs.add('snapshot-x', GiB)
    listing = drv.get_manageable_volumes([managed], None, 10, 0,
                                         ['size'], ['asc'])
    by_name = {e['reference']['source-name']: e for e in listing}
    assert set(by_name) == {managed.name, 'legacy.img'}
    assert by_name['legacy.img']['safe_to_manage'] is True
    assert by_name['legacy.img']['size'] == 3
    assert by_name[managed.name]['safe_to_manage'] is False
    assert by_name[managed.name]['cinder_id'] == managed.id


# -- names never go through a shell ---------------------------------------

def test_hostile_names_are_single_arguments(drv, fake_fs):
    fake_fs.add('a b;rm -rf $(x)', GiB)
    assert drv.manage_existing_get_size(
        volume(), {'source-name': 'a b;rm -rf $(x)'}) == 1
    stat = [c for c in fake_fs.calls if c[1] == 'stat'][-1]
    assert stat[-1] == 'a b;rm -rf $(x)'


# -- images: to the local file, from a bounded child ---------------------

def test_image_download_writes_the_local_file(drv, fake_fs):
    vol = volume(size=3)
    drv.create_volume(vol)
    with mock.patch('cinder.image.image_utils.fetch_to_raw') as fetch:
        drv.copy_image_to_volume(CTX, vol, mock.sentinel.svc, 'img-1')
    assert fetch.call_args[0][3] == path(vol.name)
    assert fetch.call_args[1]['size'] == 3


def shell_popen(script, seen):
    """A popen that records the driver's command and runs ``script``."""
    def popen(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.Popen(['sh', '-c', script], **kwargs)
    return popen


@pytest.fixture
def conversion_dir(tmp_path):
    path = tmp_path / 'conversion'
    path.mkdir()
    cfg.CONF.set_override('image_conversion_dir', str(path))
    yield path
    cfg.CONF.clear_override('image_conversion_dir')


def test_image_upload_reads_through_a_bounded_child(drv, fake_fs,
                                                    conversion_dir):
    """The FUSE file is never opened in cinder-volume; zeros stay holes."""
    vol = volume(size=1)
    seen = []
    drv.mount._popen = shell_popen(
        'printf abc; head -c 4194304 /dev/zero; printf xyz', seen)
    uploaded = []

    def upload(ctx, svc, meta, tmp, volume, run_as_root):
        uploaded.append((open(tmp, 'rb').read(),
                         os.stat(tmp).st_blocks * 512, run_as_root))
    with mock.patch('cinder.volume.volume_utils.upload_volume',
                    side_effect=upload):
        drv.copy_volume_to_image(CTX, vol, mock.sentinel.svc, {'id': 'i'})
    assert seen[0][-8:] == ['timeout', '-s', 'KILL',
                            str(drv.mount.copy_timeout), 'fuse-cinder-files',
                            'read', conftest.HOME, vol.name]
    data, allocated, as_root = uploaded[0]
    assert data == b'abc' + bytes(4 << 20) + b'xyz'
    assert allocated < 2 << 20 and as_root is False
    assert os.listdir(conversion_dir) == []


@pytest.mark.parametrize('script, error', [
    ('echo "fuse-cinder-files: read v in h: %s" >&2; exit 1' %
     fake_executor.ENOTCONN, 'ENOTCONN'),
    ('exit 137', 'hung'),
])
def test_image_upload_names_a_broken_mount(drv, conversion_dir, script,
                                           error):
    drv.mount._popen = shell_popen(script, [])
    with mock.patch('cinder.volume.volume_utils.upload_volume') as upload:
        with pytest.raises(mount.FuseMountUnavailable) as err:
            drv.copy_volume_to_image(CTX, volume(), mock.sentinel.svc,
                                     {'id': 'i'})
    assert error in str(err.value) and conftest.HOME in str(err.value)
    upload.assert_not_called()
    assert os.listdir(conversion_dir) == []


# -- export delegation -----------------------------------------------

def test_export_model_update_and_connector(drv):
    vol = volume()
    drv.create_volume(vol)
    connector = {'initiator': 'iqn.1993-08.org.debian:01:abc'}
    with mock.patch.object(drv.target_driver, 'create_export',
                           return_value={'location': 'loc', 'auth': 'CHAP u p'}
                           ) as create:
        update = drv.create_export(CTX, vol, connector)
    assert update == {'provider_location': 'loc', 'provider_auth': 'CHAP u p'}
    create.assert_called_once_with(CTX, vol, path(vol.name),
                                   connector=connector, readonly=False)
    with mock.patch.object(drv.target_driver, 'ensure_export',
                           return_value={'provider_auth': 'CHAP a b'}):
        assert drv.ensure_export(CTX, vol) == {'provider_auth': 'CHAP a b'}


def test_export_of_a_dead_mount_fails_naming_it(drv, fake_fs):
    vol = volume()
    drv.create_volume(vol)
    fake_fs.fail('stat', fake_executor.ENOTCONN)
    fake_fs.fail('statfs', fake_executor.ENOTCONN)
    with mock.patch.object(drv.target_driver, 'create_export') as create, \
            mock.patch.object(drv.target_driver, 'ensure_export') as ensure:
        with pytest.raises(mount.FuseMountUnavailable) as err:
            drv.create_export(CTX, vol, None)
        assert conftest.HOME in str(err.value)
        with pytest.raises(mount.FuseMountUnavailable) as err:
            drv.ensure_export(CTX, vol)
        assert conftest.HOME in str(err.value)
    create.assert_not_called()
    ensure.assert_not_called()


def test_export_of_a_missing_file_says_so(drv, fake_fs):
    """tgtd cannot open it; a look at the file after the failure says so."""
    refused = priv_tgt.TargetRefused(reason='tgtd: cannot open the file')
    fake_fs.calls.clear()
    with mock.patch.object(drv.target_driver, 'create_export',
                           side_effect=refused):
        with pytest.raises(exception.VolumeBackendAPIException) as err:
            drv.create_export(CTX, volume(), None)
    assert 'no backing file' in str(err.value)
    assert conftest.HOME in str(err.value)
    assert err.value.__cause__ is refused
    # One look at the mount before, and at the file after the failure.
    assert fake_fs.programs() == ['statfs', 'stat']


def test_export_failing_for_another_reason_keeps_its_error(drv, fake_fs):
    vol = volume()
    drv.create_volume(vol)
    refused = priv_tgt.TargetRefused(reason='no free tid')
    with mock.patch.object(drv.target_driver, 'create_export',
                           side_effect=refused):
        with pytest.raises(priv_tgt.TargetRefused) as err:
            drv.create_export(CTX, vol, None)
    assert err.value is refused


def _while_the_first_looks(threads, entered, release):
    """Start the rest while the first thread's look runs, then end it.

    ``entered`` is set once the look began, ``release`` lets it end.
    """
    threads[0].start()
    assert entered.wait(30)
    for t in threads[1:]:
        t.start()
    time.sleep(0.5)             # the others are waiting on the look
    release.set()
    for t in threads:
        t.join(30)


def test_callers_during_a_failing_look_share_its_error(drv):
    """A hung mount costs a burst one call timeout, not one per caller."""
    entered, release = threading.Event(), threading.Event()
    hung = mount.FuseMountUnavailable(mount=conftest.HOME, reason='hung')
    calls = []

    def capacity():
        calls.append(1)
        entered.set()
        release.wait(30)
        raise hung

    errors = []

    def check():
        try:
            drv.mount.check_answers()
        except mount.FuseMountUnavailable as err:
            errors.append(err)

    with mock.patch.object(drv.mount, 'capacity', side_effect=capacity):
        threads = [threading.Thread(target=check) for _ in range(5)]
        _while_the_first_looks(threads, entered, release)
        assert len(calls) == 1 and len(errors) == 5
        assert hung in errors           # the looker's own, the rest copies
        assert {str(err) for err in errors} == {str(hung)}
        # A failure vouches for nothing later: the next caller looks.
        release.set()
        with pytest.raises(mount.FuseMountUnavailable):
            drv.mount.check_answers()
        assert len(calls) == 2


def _held_capacity(drv):
    """A capacity() that sets ``entered``, then waits for ``release``."""
    entered, release = threading.Event(), threading.Event()
    real_capacity = drv.mount.capacity

    def capacity():
        entered.set()
        release.wait(30)
        return real_capacity()

    return entered, release, capacity


def test_exports_asking_during_a_look_take_its_result(drv, fake_fs):
    """Exports that ask while a look runs start no child of their own."""
    vols = [volume(vol_id='%08d-2222-3333-4444-555555555555' % n)
            for n in range(6)]
    for vol in vols:
        drv.create_volume(vol)
    fake_fs.calls.clear()
    entered, release, capacity = _held_capacity(drv)
    exported = []

    def export(vol):
        drv.create_export(CTX, vol, None)
        exported.append(vol.id)

    with mock.patch.object(drv.target_driver, 'create_export',
                           return_value={'location': 'l', 'auth': 'a'}), \
            mock.patch.object(drv.mount, 'capacity', side_effect=capacity):
        threads = [threading.Thread(target=export, args=(v,)) for v in vols]
        _while_the_first_looks(threads, entered, release)
        assert sorted(exported) == sorted(v.id for v in vols)
        assert fake_fs.programs() == ['statfs']
        # Asked after the look ended: a look of its own.
        drv.create_export(CTX, vols[0], None)
        assert fake_fs.programs() == ['statfs', 'statfs']


def test_stats_asked_during_a_look_take_its_result(drv, fake_fs):
    """Cinder refreshes the stats after every deletion: a burst shares."""
    fake_fs.calls.clear()
    entered, release, capacity = _held_capacity(drv)
    stats = []

    def refresh():
        stats.append(drv.get_volume_stats(refresh=True))

    with mock.patch.object(drv.mount, 'capacity', side_effect=capacity):
        threads = [threading.Thread(target=refresh) for _ in range(4)]
        _while_the_first_looks(threads, entered, release)
    assert fake_fs.programs() == ['statfs']
    assert len(stats) == 4
    assert {s['backend_state'] for s in stats} == {'up'}
    assert len({s['free_capacity_gb'] for s in stats}) == 1
    assert stats[0]['total_capacity_gb'] > 0


def test_ensure_burst_looks_at_the_mount_once(drv, fake_fs):
    fake_fs.calls.clear()
    with mock.patch.object(drv.target_driver, 'ensure_export') as ensure:
        for n in range(20):
            drv.ensure_export(CTX, volume(vol_id='%08d-2222-3333-4444-'
                                          '555555555555' % n))
    assert ensure.call_count == 20
    assert fake_fs.programs() == ['statfs']


def test_watch_heals_and_reconciles_without_statistics(healing, backend_conf):
    drv, remount, reopen = healing
    backend_conf(fuse_tgt_reconcile_interval=10)
    with mock.patch.object(drv.target_driver, 'reconcile',
                           return_value=2) as reconcile:
        drv.watch_once()
        reopen.assert_not_called()
        assert reconcile.call_count == 1
        remount()
        drv.watch_once()
        reopen.assert_called_once_with(conftest.HOME)
        assert reconcile.call_count == 1     # not again within 10 s
        drv._last_reconcile -= 10
        drv.watch_once()
        assert reconcile.call_count == 2
        reconcile.assert_called_with(conftest.HOME)


def test_watch_leaves_an_unmounted_home_alone(healing, mounts_file):
    drv, remount, reopen = healing
    mounts_file.write_text('/dev/vda / ext4 rw 0 0\n')
    remount()
    with mock.patch.object(drv.target_driver, 'reconcile') as reconcile:
        drv.watch_once()
    reopen.assert_not_called()
    reconcile.assert_not_called()


def test_the_watch_ticks_until_the_driver_is_dropped(make_driver):
    drv = make_driver(fuse_watch_interval=0.05)
    ticks = []
    drv.watch_once = lambda: ticks.append(1)
    drv.do_setup(CTX)
    thread = drv._watch
    deadline = time.monotonic() + 5
    while len(ticks) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ticks) >= 3
    del drv
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


# -- what manage and the listing may not take --------------------------------

OTHER_ID = '88888888-2222-3333-4444-555555555555'


@pytest.mark.parametrize('name', [
    'snapshot-' + SNAP_ID,
    '.fuse_cinder_tmp-volume-%s-0123abcd' % OTHER_ID,
    '.fuse_cinder_probe-' + '0' * 32,
])
def test_manage_refuses_files_cinder_owns(drv, fake_fs, name):
    fake_fs.add(name, GiB)
    with pytest.raises(exception.ManageExistingInvalidReference):
        drv.manage_existing(volume(), {'source-name': name})
    assert fake_fs.names() == [name]


def test_manage_refuses_another_volumes_file(drv, fake_fs):
    other = 'volume-' + OTHER_ID
    fake_fs.add(other, GiB)
    with mock.patch('cinder.objects.Volume.get_by_id') as get:
        with pytest.raises(exception.ManageExistingInvalidReference) as err:
            drv.manage_existing(volume(), {'source-name': other})
    assert get.call_args[0][1] == OTHER_ID
    assert OTHER_ID in str(err.value)
    assert fake_fs.names() == [other]


def test_manage_takes_a_volume_file_cinder_forgot(drv, fake_fs):
    """After unmanage, or from another deployment: Cinder has no such id."""
    other = 'volume-' + OTHER_ID
    fake_fs.add(other, GiB)
    vol = volume()
    with mock.patch('cinder.objects.Volume.get_by_id',
                    side_effect=exception.VolumeNotFound(volume_id='x')):
        drv.manage_existing(vol, {'source-name': other})
    assert fake_fs.names() == [vol.name]


def test_names_with_newlines_are_one_file(make_driver, fake_fs):
    fake_fs.add('a\nvolume-' + OTHER_ID, 5 * GiB)
    fake_fs.add('volume-' + VOL_ID, GiB)
    drv = make_driver()
    drv.do_setup(CTX)
    assert drv._provisioned_bytes == GiB
    listing = drv.get_manageable_volumes([], None, 10, 0, ['size'], ['asc'])
    assert sorted(e['reference']['source-name'] for e in listing) == [
        'a\nvolume-' + OTHER_ID, 'volume-' + VOL_ID]


def test_name_templates_must_be_cinders(make_driver, fake_fs):
    drv = make_driver()
    with mock.patch.object(cfg.CONF, 'volume_name_template', 'vol-%s'):
        with pytest.raises(exception.InvalidConfigurationValue):
            drv.do_setup(CTX)
    assert fake_fs.calls == []


def test_mount_paths_keep_non_ascii_and_unescape_blanks():
    text = ('bindfs /mnt/\u00e9t\u00e9 fuse rw,allow_other 0 0\n'
            'bindfs /mnt/a\\040b\\134c fuse rw 0 0\n')
    points = [e.mount_point for e in mount_table.parse_mounts(text)]
    assert points == ['/mnt/\u00e9t\u00e9', '/mnt/a b\\c']


# -- os-export (fuse_cinder/patches): capability and read-only ---------

def test_stats_report_the_export_capabilities(drv):
    stats = drv.get_volume_stats(refresh=True)
    assert stats['fuse_cinder_export'] is True
    assert stats['fuse_cinder_export_readonly'] is True


@pytest.mark.parametrize('connector, readonly', [
    ({'access_mode': 'ro'}, True), ({'access_mode': 'rw'}, False),
    ({'initiator': 'iqn.1993-08.org.debian:01:abc'}, False), (None, False)])
def test_read_only_exports_reach_the_target_helper(
        drv, connector, readonly):
    vol = volume()
    drv.create_volume(vol)
    with mock.patch.object(drv.target_driver, 'create_export',
                           return_value={'location': 'loc',
                                         'auth': 'CHAP u p'}) as create:
        drv.create_export(CTX, vol, connector)
    assert create.call_args[1]['readonly'] is readonly
