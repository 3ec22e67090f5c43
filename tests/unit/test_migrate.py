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
"""migrate_volume and retype between backends, against the fake executor.

The destination is a second driver on the same fake filesystem, and its
own statistics give the capabilities Cinder's scheduler would pass, so
source and destination agree as they do in cinder-volume. What is
checked is what is left in both volumes_home.
"""

from unittest import mock

from oslo_config import cfg
import pytest

from cinder import objects
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver

from fuse_cinder import driver
from fuse_cinder import mount
from fuse_cinder import options
from tests.unit import conftest
from tests.unit import fake_executor
from tests.unit import test_driver

GiB = 1 << 30
HOME = conftest.HOME                 # /mnt/cdmi/volumes, filesystem 0:41
SAME_FS = '/mnt/cdmi/volumes2'       # the same mount
BIND = '/mnt/bind/volumes'           # the same filesystem, another mount
OTHER_FS = '/mnt/other/volumes'      # another FUSE mount, 0:42
LOCAL = '/srv/volumes'               # on the root filesystem
SOURCE_HOST = 'node1@fuse1'
VOL = test_driver.VOL_ID
NAME = 'volume-' + VOL
MOUNTS = ('/dev/vda / ext4 rw 0 0\n' + conftest.FUSE_LINE +
          'other /mnt/other fuse.bindfs rw,allow_other 0 0\n'
          'cdmifuse /mnt/bind fuse.cdmifuse rw,allow_other 0 0\n')
MOUNTINFO = ('27 1 254:1 / / rw - ext4 /dev/vda rw\n'
             '40 27 0:41 / /mnt/cdmi rw - fuse.cdmifuse cdmifuse rw\n'
             '41 27 0:42 / /mnt/other rw - fuse.bindfs other rw\n'
             '42 27 0:41 / /mnt/bind rw - fuse.cdmifuse cdmifuse rw\n')
GROUP = 'fuse_dest'


@pytest.fixture
def mountinfo(tmp_path):
    path = tmp_path / 'mountinfo'
    path.write_text(MOUNTINFO)
    return path


@pytest.fixture
def mounts(mounts_file):
    mounts_file.write_text(MOUNTS)
    return mounts_file


@pytest.fixture
def source(make_driver, mounts, mountinfo, fake_fs):
    drv = make_driver()
    drv.host = SOURCE_HOST
    drv.mount.mountinfo_file = str(mountinfo)
    drv.do_setup(None)
    with mock.patch.object(drv.target_driver, 'remove_export') as remove:
        drv.remove_export_mock = remove
        yield drv


@pytest.fixture
def destination(fake_fs, mounts, mountinfo):
    """make(home, ...) -> a second backend's driver on ``home``."""
    touched = []

    def make(home, filesystem='fs0', backend='fuse2', **opts):
        fake_fs.add_home(home, filesystem)
        conf = configuration.Configuration(cinder_driver.volume_opts,
                                           config_group=GROUP)
        conf.append_config_values(options.fuse_opts + options.tgt_opts)
        values = dict(volume_backend_name=backend, fuse_watch_interval=0,
                      volumes_home=home, **opts)
        for name, value in values.items():
            cfg.CONF.set_override(name, value, group=GROUP)
            touched.append(name)
        drv = driver.FuseISCSIDriver(configuration=conf, execute=fake_fs,
                                     host='node1@' + backend)
        drv.mount.mounts_file = str(mounts)
        drv.mount.mountinfo_file = str(mountinfo)
        drv.do_setup(None)
        return drv
    yield make
    for name in touched:
        cfg.CONF.clear_override(name, group=GROUP)


def host_of(dest):
    """What Cinder's scheduler passes: the host and its capabilities."""
    return {'host': '%s#%s' % (dest.host, dest.backend_name),
            'capabilities': dest.get_volume_stats(refresh=True)}


def volume(**kw):
    kw.setdefault('host', SOURCE_HOST + '#fuse1')
    return test_driver.volume(size=1, **kw)


def created(drv, **kw):
    vol = volume(**kw)
    drv.create_volume(vol)
    return vol


def everything(fake_fs):
    return dict(fake_fs.files)


def test_location_info_says_driver_machine_filesystem_and_home(source):
    info = source.get_volume_stats(refresh=True)['location_info']
    assert info == ('FuseISCSIDriver:%s:0.41:thin:%s'
                    % (source.hostname, HOME))


def test_location_info_of_a_home_with_colons(destination):
    dest = destination('/mnt/other/vol:umes')
    info = dest.get_volume_stats(refresh=True)['location_info']
    assert info.split(':', 4)[2:] == ['0.42', 'thin', '/mnt/other/vol:umes']


def test_moved_by_sparse_copy_to_another_mount(source, destination,
                                               fake_fs):
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    fake_fs.calls.clear()
    assert source.migrate_volume(None, vol, host_of(dest)) == (True, None)
    assert fake_fs.names(HOME) == []
    assert fake_fs.names(OTHER_FS) == [NAME]
    assert fake_fs.files['%s/%s' % (OTHER_FS, NAME)] == GiB
    copies = [c for c in fake_fs.calls if c[1] == 'copy']
    assert len(copies) == 1
    assert copies[0][2:4] == [HOME, NAME] and copies[0][5:] == ['thin',
                                                                OTHER_FS]
    assert source._provisioned_bytes == 0
    source.remove_export_mock.assert_called_once_with(None, vol)


def test_thick_destination_gets_a_thick_copy(source, destination, fake_fs):
    dest = destination(OTHER_FS, 'fs1', fuse_sparse_volumes=False)
    vol = created(source)
    assert source.migrate_volume(None, vol, host_of(dest)) == (True, None)
    [copy] = [c for c in fake_fs.calls if c[1] == 'copy']
    assert copy[5] == 'thick'


def test_moved_by_rename_on_one_mount(source, destination, fake_fs):
    dest = destination(SAME_FS)
    vol = created(source)
    fake_fs.calls.clear()
    assert source.migrate_volume(None, vol, host_of(dest)) == (True, None)
    assert fake_fs.names(HOME) == [] and fake_fs.names(SAME_FS) == [NAME]
    assert 'copy' not in fake_fs.programs()
    [rename] = [c for c in fake_fs.calls if c[1] == 'rename']
    assert rename[2:] == [HOME, NAME, NAME, 'keep', SAME_FS]


def test_rename_across_mounts_of_one_filesystem_falls_back_to_copy(
        source, destination, fake_fs):
    """Same device number, other mount: the kernel says EXDEV."""
    dest = destination(BIND, 'fs-bind')
    vol = created(source)
    fake_fs.calls.clear()
    assert source.migrate_volume(None, vol, host_of(dest)) == (True, None)
    assert fake_fs.names(HOME) == [] and fake_fs.names(BIND) == [NAME]
    assert fake_fs.programs().count('copy') == 1
    assert test_driver.leftovers(fake_fs) == []


def test_two_backends_on_one_directory_move_nothing(source, destination,
                                                    fake_fs):
    dest = destination(HOME)
    vol = created(source)
    before = everything(fake_fs)
    fake_fs.calls.clear()
    assert source.migrate_volume(None, vol, host_of(dest)) == (True, None)
    assert everything(fake_fs) == before
    assert set(fake_fs.programs()) <= {'stat', 'statfs'}


def _other_machine(caps):
    caps['location_info'] = caps['location_info'].replace(
        ':%s:' % caps['location_info'].split(':')[1], ':node2:', 1)


def _other_filesystem(caps):
    caps['location_info'] = caps['location_info'].replace(':0.42:',
                                                          ':0.77:')


def _lvm(caps):
    caps['location_info'] = 'LVMVolumeDriver:node1:cinder-volumes:thin:0'


def _garbage(caps):
    caps['location_info'] = 'FuseISCSIDriver:only-two'


def _relative_home(caps):
    caps['location_info'] = caps['location_info'].replace(
        ':' + OTHER_FS, ':mnt/other/volumes')


def _dotted_home(caps):
    caps['location_info'] = caps['location_info'].replace(
        ':' + OTHER_FS, ':/mnt/other/../other/volumes')


def _no_capabilities(caps):
    caps.clear()


@pytest.mark.parametrize('spoil', [
    _other_machine, _other_filesystem, _lvm, _garbage, _relative_home,
    _dotted_home, _no_capabilities])
def test_anything_but_a_fuse_backend_here_takes_the_generic_path(
        source, destination, fake_fs, spoil):
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    host = host_of(dest)
    spoil(host['capabilities'])
    before = everything(fake_fs)
    fake_fs.calls.clear()
    assert source.migrate_volume(None, vol, host) == (False, None)
    assert everything(fake_fs) == before
    assert fake_fs.calls == []
    source.remove_export_mock.assert_not_called()


def test_a_home_that_is_not_on_fuse_here_takes_the_generic_path(
        source, destination, fake_fs, mountinfo):
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    host = host_of(dest)
    # The destination's path, unmounted here (another mount namespace).
    caps = host['capabilities']
    caps['location_info'] = caps['location_info'].replace(
        ':0.42:', ':254.1:').replace(':' + OTHER_FS, ':' + LOCAL)
    assert caps['location_info'].endswith(':254.1:thin:' + LOCAL)
    fake_fs.calls.clear()
    assert source.migrate_volume(None, vol, host) == (False, None)
    assert fake_fs.calls == []
    assert fake_fs.names(HOME) == [NAME]


def test_the_same_backend_takes_the_generic_path(source, fake_fs):
    vol = created(source)
    host = {'host': SOURCE_HOST + '#fuse-test',
            'capabilities': source.get_volume_stats(refresh=True)}
    assert source.migrate_volume(None, vol, host) == (False, None)
    assert fake_fs.names(HOME) == [NAME]


def _attachment(vol):
    vol.volume_attachment = objects.VolumeAttachmentList(objects=[
        objects.VolumeAttachment(id='a' * 8 + '-0000-0000-0000-' + 'a' * 12,
                                 volume_id=vol.id, attach_status='attached',
                                 connector={'initiator': 'iqn.x'})])


@pytest.mark.parametrize('state', [
    {'status': 'in-use'},
    {'status': 'maintenance', 'previous_status': 'in-use'},
    {'status': 'retyping', 'previous_status': 'in-use'},
    {'status': 'error'},
    {'status': 'maintenance', 'previous_status': 'available',
     'attached': True},
])
def test_a_volume_in_use_is_not_moved_by_the_driver(source, destination,
                                                    fake_fs, state):
    dest = destination(OTHER_FS, 'fs1')
    state = dict(state)
    attached = state.pop('attached', False)
    vol = created(source, **state)
    if attached:
        _attachment(vol)
    fake_fs.calls.clear()
    assert source.migrate_volume(None, vol, host_of(dest)) == (False, None)
    assert fake_fs.names(HOME) == [NAME] and fake_fs.names(OTHER_FS) == []
    source.remove_export_mock.assert_not_called()


@pytest.mark.parametrize('status', ['maintenance', 'retyping'])
def test_migrate_and_retype_statuses_of_a_detached_volume(
        source, destination, fake_fs, status):
    """cinder migrate sets 'maintenance', cinder retype 'retyping'."""
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source, status=status, previous_status='available')
    assert source.migrate_volume(None, vol, host_of(dest)) == (True, None)
    assert fake_fs.names(OTHER_FS) == [NAME]


@pytest.mark.parametrize('op, error, raised', [
    ('copy', fake_executor.ENOSPC, mount.FuseNoSpace),
    ('copy', fake_executor.ENOTCONN, mount.FuseMountUnavailable),
    ('rename', 'rename: Input/output error', Exception),
])
def test_a_failed_copy_leaves_the_source_and_no_temporary(
        source, destination, fake_fs, op, error, raised):
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    provisioned = source._provisioned_bytes
    fake_fs.fail(op, error)
    with pytest.raises(raised) as err:
        source.migrate_volume(None, vol, host_of(dest))
    if raised is not Exception:
        assert OTHER_FS in str(err.value)       # names where it failed
    assert fake_fs.names(HOME) == [NAME]
    assert fake_fs.names(OTHER_FS) == []
    assert fake_fs.files['%s/%s' % (HOME, NAME)] == GiB
    assert source._provisioned_bytes == provisioned


def test_a_failed_rename_on_one_mount_leaves_the_source(source, destination,
                                                        fake_fs):
    dest = destination(SAME_FS)
    vol = created(source)
    fake_fs.fail('rename', 'rename: Input/output error')
    with pytest.raises(Exception):
        source.migrate_volume(None, vol, host_of(dest))
    assert fake_fs.names(HOME) == [NAME] and fake_fs.names(SAME_FS) == []
    assert 'copy' not in fake_fs.programs()


def test_an_existing_file_at_the_destination_is_never_overwritten(
        source, destination, fake_fs):
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    fake_fs.add(NAME, 5, home=OTHER_FS)
    with pytest.raises(Exception) as err:
        source.migrate_volume(None, vol, host_of(dest))
    assert 'already exists' in str(err.value)
    assert fake_fs.files['%s/%s' % (OTHER_FS, NAME)] == 5
    assert fake_fs.names(HOME) == [NAME]
    assert 'copy' not in fake_fs.programs()


def test_a_missing_source_file_fails_without_touching_the_destination(
        source, destination, fake_fs):
    dest = destination(OTHER_FS, 'fs1')
    with pytest.raises(Exception) as err:
        source.migrate_volume(None, volume(), host_of(dest))
    assert 'missing' in str(err.value)
    assert fake_fs.names(OTHER_FS) == []


def test_a_source_that_cannot_be_removed_still_counts_as_moved(
        source, destination, fake_fs, caplog):
    """The complete copy is kept: the source's unlink may have happened."""
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    fake_fs.fail('delete', 'delete: Input/output error')
    assert source.migrate_volume(None, vol, host_of(dest)) == (True, None)
    assert fake_fs.names(OTHER_FS) == [NAME]
    assert 'remove it there by hand' in caplog.text
    assert HOME in caplog.text


def test_a_failed_target_removal_moves_nothing(source, destination,
                                               fake_fs):
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    source.remove_export_mock.side_effect = RuntimeError('tgtd')
    with pytest.raises(RuntimeError):
        source.migrate_volume(None, vol, host_of(dest))
    assert fake_fs.names(HOME) == [NAME] and fake_fs.names(OTHER_FS) == []


def test_retype_on_this_backend_needs_no_work(source, fake_fs):
    vol = created(source)
    before = everything(fake_fs)
    host = {'host': SOURCE_HOST + '#fuse-test', 'capabilities': {}}
    assert source.retype(None, vol, None, {}, host) == (True, None)
    assert everything(fake_fs) == before


def test_retype_to_another_backend_asks_for_a_migration(source, destination,
                                                        fake_fs):
    dest = destination(OTHER_FS, 'fs1')
    vol = created(source)
    assert source.retype(None, vol, None, {}, host_of(dest)) == (False, None)
    assert fake_fs.names(HOME) == [NAME] and fake_fs.names(OTHER_FS) == []
