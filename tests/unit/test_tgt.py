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
"""TgtFileTarget against a fake tgtd (tests/unit/fake_tgt.py)."""

import glob
import logging
import os
import stat
import subprocess
import sys
from unittest import mock

from oslo_config import cfg
import pytest

from cinder import context
from cinder import exception
from cinder import objects
from cinder.tests.unit import fake_volume

from fuse_cinder.target import tgt
from tests.unit import fake_tgt
from tests.unit import test_rootwrap

CTX = context.get_admin_context()
PREFIX = 'iqn.2010-10.org.openstack:'
HOME = '/mnt/fuse/volumes'
IDS = ['%08d-0000-4000-8000-000000000000' % i for i in range(300)]
HOST1 = 'iqn.1994-05.com.redhat:host1'
HOST2 = 'iqn.1994-05.com.redhat:host2'
USER, SECRET = 'chapUser0123456789ab', 'S3cretS3cret1234'
AUTH = 'CHAP %s %s' % (USER, SECRET)

objects.register_all()


class FakeDB:
    """Just volume_get, which ISCSITarget uses for the stored CHAP."""

    def __init__(self):
        self.auth = {}

    def volume_get(self, ctxt, volume_id):
        if volume_id not in self.auth:
            raise exception.VolumeNotFound(volume_id=volume_id)
        return {'id': volume_id, 'provider_auth': self.auth[volume_id]}


def volume(n=0, **kw):
    kw.setdefault('provider_auth', None)
    kw.setdefault('provider_location', None)
    return fake_volume.fake_volume_obj(CTX, id=IDS[n], **kw)


def path_of(vol):
    return os.path.join(HOME, vol.name)


def attach(vol, *initiators, status='attached'):
    vol.volume_attachment = objects.VolumeAttachmentList(objects=[
        objects.VolumeAttachment(CTX, id=IDS[200 + i], volume_id=vol.id,
                                 attach_status=status,
                                 connector={'initiator': ini})
        for i, ini in enumerate(initiators)])


@pytest.fixture
def tgtd():
    return fake_tgt.FakeTgt(control_port=21)


@pytest.fixture
def targets_dir(tmp_path):
    return str(tmp_path / 'targets')


@pytest.fixture
def db():
    return FakeDB()


@pytest.fixture
def make_target(backend_conf, tgtd, targets_dir, db):
    def make(**opts):
        values = dict(volumes_dir=targets_dir, fuse_tgt_control_port=21,
                      target_ip_address='192.0.2.10', target_port=3260)
        values.update(opts)
        conf = backend_conf(**values)
        return tgt.TgtFileTarget(configuration=conf, db=db, executor=tgtd)
    return make


@pytest.fixture
def target(make_target):
    return make_target()


def export(target, vol, connector=None):
    """create_export and keep its result on the volume, as Cinder does."""
    data = target.create_export(CTX, vol, path_of(vol), connector=connector)
    vol.provider_location = data['location']
    vol.provider_auth = data['auth']
    return data


def conf_file(targets_dir, vol):
    return os.path.join(targets_dir, vol.name + '.conf')


def read(path):
    with open(path) as f:
        return f.read()


# -- create_export --------------------------------------------------------

def test_create_export_serves_the_file_as_lun_1(target, tgtd, targets_dir):
    vol = volume(provider_auth=AUTH)
    data = export(target, vol)

    t = tgtd.by_iqn(PREFIX + vol.name)
    assert t.luns == {1: path_of(vol)}
    assert t.accounts == [USER] and tgtd.accounts[USER] == SECRET
    assert t.acl == ['ALL']
    assert data == {
        'location': '192.0.2.10:3260,%d %s%s 1' % (t.tid, PREFIX, vol.name),
        'auth': AUTH}
    assert ['tgt-admin', '-C', '21', '--conf', conf_file(targets_dir, vol),
            '--update', PREFIX + vol.name] in tgtd.calls
    # everything ran as root through the injected executor, with a timeout
    assert all(k['run_as_root'] and k['timeout'] for k in tgtd.kwargs)


def test_config_file_content_and_mode(make_target, targets_dir):
    target = make_target(fuse_tgt_write_cache=False,
                         fuse_tgt_bsoflags='direct,sync')
    vol = volume(provider_auth=AUTH)
    export(target, vol, connector={'initiator': HOST1})

    path = conf_file(targets_dir, vol)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = [line.strip() for line in read(path).splitlines()
             if not line.startswith('#')]
    serial = vol.id.replace('-', '')
    assert lines == [
        '<target %s%s>' % (PREFIX, vol.name),
        'driver iscsi',
        'backing-store %s' % path_of(vol),
        'allow-in-use yes',
        'incominguser %s %s' % (USER, SECRET),
        'write-cache off',
        'bsoflags direct:sync',
        'scsi_id %s' % serial,
        'scsi_sn %s' % serial,
        'initiator-address 0.0.0.0/32',
        'initiator-name %s' % HOST1,
        '</target>']
    # what tgt-admin makes of it
    assert fake_tgt.parse_targets(read(path))[PREFIX + vol.name][
        'bsoflags'] == ['direct:sync']


def test_config_defaults(target, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    text = read(conf_file(targets_dir, vol))
    assert '    write-cache on\n' in text
    assert '    bsoflags direct\n' in text
    assert 'initiator-' not in text


def test_config_is_replaced_atomically(target, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    path = conf_file(targets_dir, vol)
    before = read(path)

    with mock.patch('os.replace', side_effect=OSError(28, 'No space')):
        with pytest.raises(OSError):
            target.initialize_connection(vol, {'initiator': HOST1})
    # the old file is intact and no temporary file is left behind
    assert read(path) == before
    assert os.listdir(targets_dir) == [vol.name + '.conf']


def test_write_file_atomic_syncs_file_and_directory(tmp_path):
    path = str(tmp_path / 'volume-x.conf')
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    with mock.patch('os.fsync', side_effect=fsync), \
            mock.patch('tempfile.mkstemp', wraps=tgt.tempfile.mkstemp) as mk:
        tgt.write_file_atomic(path, 'new\n')
    assert synced == [False, True]
    # the temporary name is a dot file: tgt's "include dir/*.conf" skips it
    tmp_name = os.path.basename(mk.call_args.kwargs['prefix'])
    assert tmp_name.startswith('.') and mk.call_args.kwargs['suffix'] == '.tmp'
    assert read(path) == 'new\n'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert glob.glob(str(tmp_path / '*.conf')) == [path]


def test_control_port_zero_drives_the_default_tgtd(make_target, backend_conf):
    tgtd = fake_tgt.FakeTgt(control_port=0)
    target = make_target(fuse_tgt_control_port=0)
    target._execute = tgtd
    export(target, volume(provider_auth=AUTH))
    assert tgtd.calls and all('-C' not in c for c in tgtd.calls)


def test_iser_is_refused(make_target):
    with pytest.raises(exception.InvalidConfigurationValue):
        make_target(target_protocol='iser')


def test_shared_targets_off():
    assert tgt.TgtFileTarget.SHARED_TARGET_SUPPORT is False


# -- verification of what tgt-admin did -----------------------------------

def test_missing_lun_fails_cleanly(target, tgtd, targets_dir, caplog):
    vol = volume(provider_auth=AUTH)
    tgtd.missing.add(path_of(vol))   # tgt-admin skips it and exits 0

    with pytest.raises(exception.ISCSITargetCreateFailed) as err:
        export(target, vol)
    assert 'LUN 1' in str(err.value) and path_of(vol) in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in caplog.text
    # no half-made target and no config file are left behind
    assert tgtd.by_iqn(PREFIX + vol.name) is None
    assert not os.path.exists(conf_file(targets_dir, vol))


def test_target_missing_after_update_fails(target, tgtd):
    vol = volume(provider_auth=AUTH)
    with mock.patch.object(tgtd, '_update', return_value=''):
        with pytest.raises(exception.ISCSITargetCreateFailed) as err:
            export(target, vol)
    assert 'has no target' in str(err.value)


def test_tgt_admin_failure_hides_the_secret(target, tgtd, targets_dir,
                                            caplog):
    caplog.set_level(logging.DEBUG)
    vol = volume(provider_auth=AUTH)
    tgtd.fail(['tgt-admin'], exit_code=22, times=3, stdout=(
        'Command:\n\ttgtadm -C 21 --lld iscsi --mode account --op new '
        '--user=%s --password=%s\nexited with code: 22.\n' % (USER, SECRET)),
        stderr='tgtadm: %s rejected' % SECRET)

    with pytest.raises(exception.ISCSITargetCreateFailed) as err:
        export(target, vol)
    assert 'exit code 22' in str(err.value)
    assert SECRET not in str(err.value)
    assert SECRET not in caplog.text
    assert tgtd.count('tgt-admin', '--update') == tgt.UPDATE_ATTEMPTS
    assert not os.path.exists(conf_file(targets_dir, vol))


def test_tgt_admin_race_is_retried(target, tgtd):
    vol = volume(provider_auth=AUTH)
    tgtd.fail(['tgt-admin'], stderr='tgtadm: this target already exists')
    with mock.patch('time.sleep'):
        export(target, vol)
    assert tgtd.by_iqn(PREFIX + vol.name).luns == {1: path_of(vol)}


def test_hung_tgtadm_is_reported(target, tgtd):
    with mock.patch.object(tgtd, '_tgt_admin', side_effect=(
            subprocess.TimeoutExpired('tgt-admin', 120))):
        with pytest.raises(exception.ISCSITargetCreateFailed) as err:
            with mock.patch('time.sleep'):
                export(target, volume(provider_auth=AUTH))
    assert 'did not finish within 120 s' in str(err.value)


def test_busy_target_with_lost_lun_is_repaired_in_place(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    t = tgtd.by_iqn(PREFIX + vol.name)
    t.sessions.append(HOST1)
    del t.luns[1]            # e.g. tgtd started before the FUSE mount

    export(target, vol)
    assert t.luns == {1: path_of(vol)}
    assert t.sessions == [HOST1]      # the session was not dropped


# -- CHAP -----------------------------------------------------------------

def test_chap_from_the_volume_survives_reexport(target, targets_dir):
    vol = volume(provider_auth=AUTH)
    assert export(target, vol)['auth'] == AUTH
    target.remove_export(CTX, vol)
    assert export(target, vol)['auth'] == AUTH
    assert 'incominguser %s %s' % (USER, SECRET) in read(
        conf_file(targets_dir, vol))


def test_chap_comes_from_the_db_when_the_volume_lacks_it(target, db):
    vol = volume()
    db.auth[vol.id] = AUTH
    assert export(target, vol)['auth'] == AUTH


def test_chap_is_generated_for_a_new_volume(target, tgtd):
    vol = volume()
    method, user, secret = export(target, vol)['auth'].split()
    assert method == 'CHAP' and len(user) == 20 and len(secret) == 16
    assert tgtd.accounts[user] == secret
    # and kept next time
    assert export(target, vol)['auth'] == 'CHAP %s %s' % (user, secret)


def test_odd_chap_from_the_db_is_refused_without_echo(target, db):
    vol = volume(provider_auth='CHAP user bad;secret$')
    with pytest.raises(exception.VolumeBackendAPIException) as err:
        export(target, vol)
    assert 'bad;secret$' not in str(err.value)


# -- initiator restriction ------------------------------------------------

def acl(tgtd, vol):
    return sorted(tgtd.by_iqn(PREFIX + vol.name).acl)


def test_initialize_connection_restricts_to_the_initiator(target, tgtd,
                                                          targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    info = target.initialize_connection(vol, {'initiator': HOST1})

    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1]
    assert 'initiator-name %s' % HOST1 in read(conf_file(targets_dir, vol))
    data = info['data']
    assert info['driver_volume_type'] == 'iscsi'
    assert data['target_iqn'] == PREFIX + vol.name
    assert data['target_portal'] == '192.0.2.10:3260'
    assert data['target_lun'] == 1
    assert (data['auth_method'], data['auth_username'],
            data['auth_password']) == ('CHAP', USER, SECRET)


def test_connector_at_create_export_restricts_at_once(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol, connector={'initiator': HOST1})
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1]
    n = len(tgtd.calls)
    target.initialize_connection(vol, {'initiator': HOST1})
    # already right: one show, no bind/unbind and no tgt-admin
    assert [c for c in tgtd.calls[n:] if '--op' in c] == [
        ['tgtadm', '-C', '21', '--lld', 'iscsi', '--mode', 'target',
         '--op', 'show']]


def test_multiattach_keeps_every_host_until_it_detaches(target, tgtd):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol, connector={'initiator': HOST1})
    target.initialize_connection(vol, {'initiator': HOST1})
    # the second host: create_export must not drop the first one
    export(target, vol, connector={'initiator': HOST2})
    target.initialize_connection(vol, {'initiator': HOST2})
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1, HOST2]

    attach(vol, HOST1, HOST2)
    target.terminate_connection(vol, {'initiator': HOST1})
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST2]

    attach(vol, HOST2)
    target.terminate_connection(vol, {'initiator': HOST2})
    # nobody left: back to CHAP only, as tgt-admin itself would do
    assert acl(tgtd, vol) == ['ALL']


def test_two_attachments_from_one_host_keep_it(target, tgtd):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol)
    target.initialize_connection(vol, {'initiator': HOST1})
    attach(vol, HOST1, HOST1)
    target.terminate_connection(vol, {'initiator': HOST1})
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1]


def test_forced_detach_without_connector_changes_nothing(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    target.initialize_connection(vol, {'initiator': HOST1})
    n = len(tgtd.calls)
    target.terminate_connection(vol, None, force=True)
    assert len(tgtd.calls) == n


@pytest.mark.parametrize('name', [
    'iqn.1994-05.com.redhat:x; rm -rf /',
    'iqn.1994-05.com.redhat:x\n</target>',
    'iqn.1994-05.com.redhat:$(id)',
    'host1',
    'iqn.1994-05.com.redhat:' + 'x' * 300,
])
def test_bad_initiator_names_never_reach_tgt(target, tgtd, targets_dir,
                                             name):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    before = read(conf_file(targets_dir, vol))
    with pytest.raises(exception.InvalidConnectorException):
        target.validate_connector({'initiator': name})
    with pytest.raises(exception.InvalidConnectorException):
        target.initialize_connection(vol, {'initiator': name})
    with pytest.raises(exception.InvalidConnectorException):
        export(target, volume(1, provider_auth=AUTH),
               connector={'initiator': name})
    assert read(conf_file(targets_dir, vol)) == before
    assert not any(name in ' '.join(c) for c in tgtd.calls)


def test_validate_connector(target):
    assert target.validate_connector({'initiator': HOST1})
    assert target.validate_connector(
        {'initiator': 'eui.02004567A425678D'})
    with pytest.raises(exception.InvalidConnectorException):
        target.validate_connector({'host': 'h'})


def test_initialize_connection_needs_an_export(target):
    with pytest.raises(exception.VolumeBackendAPIException):
        target.initialize_connection(volume(provider_auth=AUTH),
                                     {'initiator': HOST1})


# -- remove_export --------------------------------------------------------

def test_remove_export_is_complete_and_idempotent(target, tgtd, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.by_iqn(PREFIX + vol.name).sessions.append(HOST1)

    target.remove_export(CTX, vol)
    assert tgtd.by_iqn(PREFIX + vol.name) is None    # --force: even busy
    assert USER not in tgtd.accounts               # no secret left in tgtd
    assert not os.path.exists(conf_file(targets_dir, vol))
    assert ['tgt-admin', '-C', '21', '--force', '--delete',
            PREFIX + vol.name] in tgtd.calls

    n = tgtd.count('tgt-admin')
    target.remove_export(CTX, vol)
    target.remove_export(CTX, volume(1))           # never exported
    assert tgtd.count('tgt-admin') == n


def test_remove_export_when_tgtd_lost_the_target(target, tgtd, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.restart()
    target.remove_export(CTX, vol)
    assert not os.path.exists(conf_file(targets_dir, vol))


def test_remove_export_keeps_an_account_another_target_uses(target, tgtd):
    a, b = volume(0, provider_auth=AUTH), volume(1, provider_auth=AUTH)
    export(target, a)
    export(target, b)
    target.remove_export(CTX, a)
    assert USER in tgtd.accounts


def test_remove_export_fails_if_the_target_stays(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    with mock.patch.object(tgtd, '_tgt_admin', return_value=''):
        with pytest.raises(exception.ISCSITargetRemoveFailed):
            target.remove_export(CTX, vol)


# -- ensure_export --------------------------------------------------------

def in_use(n, **kw):
    vol = volume(n, provider_auth=AUTH, status='in-use', **kw)
    return vol


def test_ensure_export_fast_path_is_one_show(make_target, tgtd):
    vols = [in_use(n) for n in range(200)]
    first = make_target()
    for vol in vols:
        export(first, vol)
        first.initialize_connection(vol, {'initiator': HOST1})

    restarted = make_target()       # a new cinder-volume process
    n = len(tgtd.calls)
    for vol in vols:
        assert restarted.ensure_export(CTX, vol, path_of(vol)) is None
    assert tgtd.calls[n:] == [['tgtadm', '-C', '21', '--lld', 'iscsi',
                               '--mode', 'target', '--op', 'show']]


def test_ensure_export_recreates_after_tgtd_restart(make_target, tgtd):
    vols = [in_use(n) for n in range(5)]
    target = make_target()
    for vol in vols:
        export(target, vol)
        target.initialize_connection(vol, {'initiator': HOST1})
    tgtd.restart()

    restarted = make_target()
    n = len(tgtd.calls)
    for vol in vols:
        restarted.ensure_export(CTX, vol, path_of(vol))
    shows = [c for c in tgtd.calls[n:] if c[-2:] == ['--op', 'show']]
    for vol in vols:
        t = tgtd.by_iqn(PREFIX + vol.name)
        assert t.luns == {1: path_of(vol)}
        assert sorted(t.acl) == ['0.0.0.0/32', HOST1]
        assert tgtd.accounts[USER] == SECRET
    # one listing for the burst plus one check per re-created target
    assert len(shows) == 1 + len(vols)


def test_ensure_export_fixes_an_open_acl(target, tgtd):
    vol = in_use(0)
    export(target, vol)
    target.initialize_connection(vol, {'initiator': HOST1})
    t = tgtd.by_iqn(PREFIX + vol.name)
    t.acl = ['ALL', HOST1]          # e.g. restored by an older config
    target.ensure_export(CTX, vol, path_of(vol))
    assert sorted(t.acl) == ['0.0.0.0/32', HOST1]


def test_ensure_export_rebuilds_a_lost_config_from_attachments(
        target, tgtd, targets_dir):
    vol = in_use(0)
    export(target, vol)
    os.unlink(conf_file(targets_dir, vol))
    tgtd.restart()
    attach(vol, HOST2)
    target.ensure_export(CTX, vol, path_of(vol))
    assert 'initiator-name %s' % HOST2 in read(conf_file(targets_dir, vol))
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST2]


def test_ensure_export_cache_expires(make_target, tgtd):
    vol = in_use(0)
    target = make_target()
    export(target, vol)
    target.ensure_export(CTX, vol, path_of(vol))
    tgtd.restart()
    with mock.patch('time.monotonic',
                    return_value=tgt.time.monotonic() +
                    tgt.SHOW_CACHE_TTL + 1):
        target.ensure_export(CTX, vol, path_of(vol))
    assert tgtd.by_iqn(PREFIX + vol.name).luns == {1: path_of(vol)}


def test_ensure_export_gives_chap_to_a_volume_without(target, tgtd):
    vol = volume(status='in-use')
    update = target.ensure_export(CTX, vol, path_of(vol))
    method, user, _secret = update['provider_auth'].split()
    assert method == 'CHAP' and user in tgtd.accounts


# -- extend and re-open ---------------------------------------------------

def test_extend_target_reopens_the_lun_and_keeps_sessions(make_target,
                                                          tgtd):
    target = make_target(fuse_tgt_write_cache=False,
                         fuse_tgt_bsoflags='direct,sync')
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    t = tgtd.by_iqn(PREFIX + vol.name)
    t.sessions.append(HOST1)
    n = len(tgtd.calls)

    target.extend_target(vol)

    calls = tgtd.calls[n:]
    tid = str(t.tid)
    base = ['tgtadm', '-C', '21', '--lld', 'iscsi', '--mode', 'logicalunit']
    assert base + ['--op', 'delete', '--tid', tid, '--lun', '1'] in calls
    assert base + ['--op', 'new', '--tid', tid, '--lun', '1',
                   '--backing-store', path_of(vol),
                   '--bsoflags', 'direct:sync'] in calls
    params = t.lun_params[1]
    serial = vol.id.replace('-', '')
    assert params['scsi_id'] == params['scsi_sn'] == serial
    assert params['mode_page'] == tgt.WRITE_CACHE_OFF_MODE_PAGE
    assert t.luns == {1: path_of(vol)} and t.sessions == [HOST1]
    assert tgtd.count('tgt-admin') == 1          # only the first export


def test_reopen_lun_after_a_fuse_remount(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    assert target.reopen_lun(vol, '/mnt/other/' + vol.name)
    assert tgtd.by_iqn(PREFIX + vol.name).luns == {
        1: '/mnt/other/' + vol.name}


def test_reopen_lun_waits_for_busy_lun(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.fail(['logicalunit', 'delete'], exit_code=22, times=2,
              stderr='tgtadm: this logical unit is still active')
    with mock.patch('time.sleep') as sleep:
        assert target.reopen_lun(vol)
    assert sleep.call_count == 2


def test_reopen_lun_reports_a_file_tgtd_cannot_open(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.missing.add(path_of(vol))
    with pytest.raises(exception.ISCSITargetHelperCommandFailed):
        target.reopen_lun(vol)


def test_reopen_or_extend_without_target_is_a_noop(target, tgtd):
    assert target.reopen_lun(volume(provider_auth=AUTH)) is False
    target.extend_target(volume(provider_auth=AUTH))
    assert tgtd.count('tgtadm') == 2 and tgtd.count('tgt-admin') == 0


def test_reopen_all_reopens_our_luns_in_the_directory(target, tgtd,
                                                      targets_dir):
    ours = [volume(n, provider_auth=AUTH) for n in range(2)]
    for vol in ours:
        export(target, vol)
    elsewhere = volume(2, provider_auth=AUTH)
    target.create_export(CTX, elsewhere, '/srv/other/' + elsewhere.name)
    tgtd.by_iqn(PREFIX + ours[0].name).sessions.append(HOST1)
    # A target of someone else on the same directory: no config of ours.
    stranger = volume(3, provider_auth=AUTH)
    export(target, stranger)
    os.unlink(conf_file(targets_dir, stranger))
    n = len(tgtd.calls)

    assert target.reopen_all(HOME + '/') == 2

    reopened = [c[c.index('--tid') + 1] for c in tgtd.calls[n:]
                if 'logicalunit' in c and 'new' in c]
    assert sorted(reopened) == sorted(
        str(tgtd.by_iqn(PREFIX + v.name).tid) for v in ours)
    for vol in ours:
        t = tgtd.by_iqn(PREFIX + vol.name)
        assert t.luns == {1: path_of(vol)}
        assert t.lun_params[1]['scsi_id'] == vol.id.replace('-', '')
    assert tgtd.by_iqn(PREFIX + ours[0].name).sessions == [HOST1]
    assert tgtd.count('tgt-admin') == 4          # the exports only


def test_reopen_all_tries_every_lun_and_a_retry_finishes(target, tgtd):
    vols = [volume(n, provider_auth=AUTH) for n in range(3)]
    for vol in vols:
        export(target, vol)
    tgtd.missing.add(path_of(vols[0]))      # the file is not back yet

    with pytest.raises(exception.TargetUpdateFailed) as err:
        target.reopen_all(HOME)
    assert '1 of 3 LUNs' in str(err.value) and vols[0].id in str(err.value)
    assert tgtd.by_iqn(PREFIX + vols[0].name).luns == {}
    assert tgtd.by_iqn(PREFIX + vols[2].name).luns == {1: path_of(vols[2])}

    # The LUN the failed attempt removed is found again by its config.
    tgtd.missing.clear()
    assert target.reopen_all(HOME) == 3
    assert tgtd.by_iqn(PREFIX + vols[0].name).luns == {1: path_of(vols[0])}


def test_reopen_all_without_targets_is_one_show(target, tgtd):
    assert target.reopen_all(HOME) == 0
    assert len(tgtd.calls) == 1 and 'show' in tgtd.calls[0]


# -- logs -----------------------------------------------------------------

def test_no_secret_in_logs_over_a_life_cycle(target, tgtd, caplog):
    caplog.set_level(logging.DEBUG)
    vol = in_use(0)
    export(target, vol)
    target.initialize_connection(vol, {'initiator': HOST1})
    target.extend_target(vol)
    attach(vol, HOST1)
    target.terminate_connection(vol, {'initiator': HOST1})
    tgtd.restart()
    target.ensure_export(CTX, vol, path_of(vol))
    target.remove_export(CTX, vol)
    assert 'Removed target' in caplog.text
    assert SECRET not in caplog.text
    # and no secret on any command line either (ps shows those)
    assert not any(SECRET in ' '.join(c) for c in tgtd.calls)


# -- parsing real tgtadm output -------------------------------------------

SHOW = """\
Target 1: iqn.2010-10.org.openstack:volume-s
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 1
            Initiator: iqn.2004-10.com.ubuntu:01:aaa alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: \n\
        LUN: 1
            Type: disk
            SCSI ID: IET     00010001
            SCSI SN: beaf11
            Size: 17 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/exp/m2/v
            Backing store flags: \n\
    Account information:
        user1
    ACL information:
        0.0.0.0/32
        iqn.2004-10.com.ubuntu:01:aaa
Target 2: iqn.2010-10.org.openstack:volume-t
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
    Account information:
    ACL information:
        ALL
"""


def test_parse_show_target():
    targets = tgt.parse_show_target(SHOW)
    s = targets['iqn.2010-10.org.openstack:volume-s']
    assert (s.tid, s.luns, s.accounts, s.connected) == (
        1, {0: None, 1: '/tmp/exp/m2/v'}, ['user1'], True)
    assert s.acl_names == {'iqn.2004-10.com.ubuntu:01:aaa'}
    assert s.acl_addresses == {'0.0.0.0/32'}
    t = targets['iqn.2010-10.org.openstack:volume-t']
    assert (t.tid, t.luns, t.accounts, t.acl, t.connected) == (
        2, {0: None}, [], ['ALL'], False)
    assert tgt.parse_show_target('') == {}


def test_parse_config_round_trip():
    spec = tgt.ExportSpec(iqn=PREFIX + 'volume-1', volume_id=IDS[1],
                          path='/mnt/v/volume-1', chap_user=USER,
                          chap_secret=SECRET,
                          initiators=frozenset([HOST1, HOST2]))
    text = tgt.render_config(spec, write_cache=True, bsoflags='')
    assert tgt.parse_config(text) == spec
    assert tgt.parse_config('garbage') is None


# -- rootwrap -------------------------------------------------------------

filters = test_rootwrap.filters


def test_every_command_is_admitted_by_rootwrap(make_target, tgtd, filters):
    target = make_target(fuse_tgt_write_cache=False,
                         fuse_tgt_bsoflags='direct')
    vol = in_use(0)
    tgtd.missing.add(path_of(volume(1)))
    with pytest.raises(exception.ISCSITargetCreateFailed):
        export(target, volume(1, provider_auth=AUTH))
    export(target, vol, connector={'initiator': HOST1})
    target.initialize_connection(vol, {'initiator': HOST2})
    attach(vol, HOST1, HOST2)
    target.terminate_connection(vol, {'initiator': HOST2})
    target.extend_target(vol)
    tgtd.restart()
    target.ensure_export(CTX, vol, path_of(vol))
    target.remove_export(CTX, vol)
    ops = {(c[0], c[c.index('--op') + 1]) if '--op' in c
           else (c[0], [w for w in c if w.startswith('--')][-1])
           for c in tgtd.calls}
    assert ops >= {('tgt-admin', '--update'), ('tgt-admin', '--delete'),
                   ('tgtadm', 'show'),
                   ('tgtadm', 'bind'), ('tgtadm', 'unbind'),
                   ('tgtadm', 'new'), ('tgtadm', 'delete'),
                   ('tgtadm', 'update')}
    for cmd in tgtd.calls:
        assert test_rootwrap.admitted(filters, cmd), cmd


def test_tgtd_changes_are_serialised_across_processes(target, tmp_path):
    """Two cinder-volume processes on one tgtd must not interleave."""
    marker = tmp_path / 'done'
    cfg.CONF.set_override('lock_path', str(tmp_path), 'oslo_concurrency')
    holder = subprocess.Popen(
        [sys.executable, '-c',
         'import pathlib, sys, time\n'
         'from oslo_concurrency import lockutils\n'
         'with lockutils.lock("tgt-%d", lock_file_prefix="fuse-cinder-",'
         ' external=True, lock_path=sys.argv[1]):\n'
         '    print("held", flush=True)\n'
         '    time.sleep(1)\n'
         '    pathlib.Path(sys.argv[2]).touch()\n' % target.control_port,
         str(tmp_path), str(marker)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with target._locked():
            # The other process marks its work done before it lets go.
            assert marker.exists()
    finally:
        holder.kill()
        holder.wait()
        cfg.CONF.clear_override('lock_path', 'oslo_concurrency')
