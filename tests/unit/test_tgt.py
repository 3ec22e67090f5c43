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

import dataclasses
import glob
import logging
import os
import stat
import threading
from unittest import mock

from oslo_config import cfg
import pytest

from cinder import context
from cinder import exception
from cinder import objects
from cinder.tests.unit import fake_volume
from cinder.volume import configuration

from fuse_cinder.privileged import tgt as priv_tgt
from fuse_cinder.targets import export_record
from fuse_cinder.targets import tgt
from fuse_cinder.targets import tgtd_mgmt
from tests.unit import fake_tgt

CTX = context.get_admin_context()
PREFIX = 'iqn.2010-10.org.openstack:'
HOME = '/mnt/fuse/volumes'
IDS = ['%08d-0000-4000-8000-000000000000' % i for i in range(300)]
HOST1 = 'iqn.1994-05.com.redhat:host1'
HOST2 = 'iqn.1994-05.com.redhat:host2'
USER, SECRET = 'chapUser0123456789ab', 'S3cretS3cret1234'
AUTH = 'CHAP %s %s' % (USER, SECRET)
#: The iSCSI login keys every target gets from the options' defaults.
DEFAULT_SESSION = {'MaxRecvDataSegmentLength': 262144,
                   'MaxBurstLength': 262144, 'FirstBurstLength': 262144,
                   'ImmediateData': 'Yes', 'InitialR2T': 'No'}


def auth_of(n):
    """CHAP of volume n: tgtd refuses one account for two exports."""
    return AUTH if n == 0 else 'CHAP chapUser%012d S3cret%010d' % (n, n)


objects.register_all()


class FakeDB:
    """Just volume_get, which ISCSITarget uses for the stored CHAP."""

    def __init__(self):
        self.auth = {}
        self.reads = 0

    def volume_get(self, ctxt, volume_id):
        self.reads += 1
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
        control = opts.pop('control', tgtd)
        values.update(opts)
        conf = backend_conf(**values)
        return tgt.TgtFileTarget(configuration=conf, db=db, control=control)
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


def serial_of(vol):
    return vol.id.replace('-', '')


def flat(call):
    """Every string in one recorded call, lists included."""
    words = []
    for arg in call:
        words += arg if isinstance(arg, list) else [arg]
    return [w for w in words if isinstance(w, str)]


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
    assert ('export_target', PREFIX + vol.name, path_of(vol), USER, SECRET,
            [], 'direct', True, serial_of(vol), False,
            DEFAULT_SESSION) in tgtd.calls
    assert os.path.exists(conf_file(targets_dir, vol))


def test_the_driver_runs_no_command(target, tgtd):
    """No tgtadm, no tgt-admin: only the privileged entry points."""
    vol = in_use(0)
    with mock.patch('oslo_concurrency.processutils.execute',
                    side_effect=AssertionError('a command ran')), \
            mock.patch('subprocess.Popen',
                       side_effect=AssertionError('a command ran')):
        export(target, vol)
        target.initialize_connection(vol, {'initiator': HOST1})
        target.extend_target(vol)
        attach(vol, HOST1)
        target.terminate_connection(vol, {'initiator': HOST1})
        target.reopen_all(HOME)
        tgtd.restart()
        target.ensure_export(CTX, vol, path_of(vol))
        target.remove_export(CTX, vol)
    assert {c[0] for c in tgtd.calls} == {
        'show', 'describe', 'export_target', 'set_acl', 'reopen_lun',
        'delete_target'}


def test_the_privileged_module_is_the_default_control(backend_conf,
                                                      targets_dir):
    conf = backend_conf(volumes_dir=targets_dir)
    assert tgt.TgtFileTarget(configuration=conf)._control is priv_tgt


def test_config_file_content_and_mode(make_target, targets_dir):
    target = make_target(iscsi_write_cache='off',
                         iscsi_target_flags='direct,sync')
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
        'FirstBurstLength 262144',
        'ImmediateData Yes',
        'InitialR2T No',
        'MaxBurstLength 262144',
        'MaxRecvDataSegmentLength 262144',
        'initiator-address 0.0.0.0/32',
        'initiator-name %s' % HOST1,
        '</target>']
    # what tgt-admin makes of it
    assert fake_tgt.parse_targets(read(path))[PREFIX + vol.name][
        'bsoflags'] == ['direct:sync']


def test_session_params_come_from_the_options(make_target, tgtd,
                                              targets_dir):
    target = make_target(fuse_tgt_max_recv_data_segment_length=65536,
                         fuse_tgt_max_burst_length=131072,
                         fuse_tgt_first_burst_length=8192,
                         fuse_tgt_immediate_data=False,
                         fuse_tgt_initial_r2t=True)
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    want = {'MaxRecvDataSegmentLength': 65536, 'MaxBurstLength': 131072,
            'FirstBurstLength': 8192, 'ImmediateData': 'No',
            'InitialR2T': 'Yes'}
    assert tgtd.by_iqn(PREFIX + vol.name).session_params == want
    # tgtd's boot include says the same to tgt-admin
    text = read(conf_file(targets_dir, vol))
    for key, value in want.items():
        assert '    %s %s\n' % (key, value) in text


def test_a_first_burst_beyond_the_max_burst_is_refused(make_target, tgtd):
    target = make_target(fuse_tgt_max_burst_length=65536,
                         fuse_tgt_first_burst_length=262144)
    vol = volume(provider_auth=AUTH)
    with pytest.raises(exception.ISCSITargetCreateFailed,
                       match='FirstBurstLength'):
        export(target, vol)
    assert tgtd.by_iqn(PREFIX + vol.name) is None


def test_config_defaults(target, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    text = read(conf_file(targets_dir, vol))
    assert '    write-cache on\n' in text
    assert '    bsoflags direct\n' in text
    assert 'initiator-' not in text


@pytest.mark.parametrize('opts,want', [
    ({}, ('direct', True)),
    ({'iscsi_target_flags': ''}, ('', True)),       # buffered, on purpose
    ({'iscsi_target_flags': 'sync:direct', 'iscsi_write_cache': 'off'},
     ('direct:sync', False)),
    ({'iscsi_target_flags': 'direct,sync'}, ('direct:sync', True)),
    # the deprecated names of earlier releases still work, and win
    ({'fuse_tgt_bsoflags': 'sync', 'iscsi_target_flags': 'direct'},
     ('sync', True)),
    ({'fuse_tgt_write_cache': False, 'iscsi_write_cache': 'on'},
     ('direct', False)),
    ({'fuse_tgt_bsoflags': ''}, ('', True)),
], ids=['defaults', 'buffered', 'cinder-names', 'comma', 'alias-flags',
        'alias-cache', 'alias-buffered'])
def test_lun_options_use_cinders_names(make_target, tgtd, opts, want):
    target = make_target(**opts)
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    params = tgtd.by_iqn(PREFIX + vol.name).lun_params[1]
    assert (params['bsoflags'], 'mode_page' not in params) == want


def test_target_flags_from_backend_defaults(make_target, tgtd):
    cfg.CONF.set_override('iscsi_target_flags', '',
                          group=configuration.SHARED_CONF_GROUP)
    try:
        target = make_target()
    finally:
        cfg.CONF.clear_override('iscsi_target_flags',
                                group=configuration.SHARED_CONF_GROUP)
    assert (target._bsoflags, target._write_cache) == ('', True)


@pytest.mark.parametrize('flags', [
    'direct,dsync', 'direct;sync', 'direct,direct', ' direct', 'aio'])
def test_unknown_target_flags_are_refused_at_start(make_target, flags):
    with pytest.raises(exception.InvalidConfigurationValue,
                       match='iscsi_target_flags'):
        make_target(iscsi_target_flags=flags)


def test_config_is_replaced_atomically(target, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    path = conf_file(targets_dir, vol)
    before = read(path)

    with mock.patch('os.rename', side_effect=OSError(28, 'No space')):
        with pytest.raises(OSError):
            target.initialize_connection(vol, {'initiator': HOST1})
    # the old file is intact and no temporary file is left behind
    assert read(path) == before
    assert os.listdir(targets_dir) == [vol.name + '.conf']


def test_config_file_is_synced_0600_and_never_half_included(
        target, targets_dir):
    vol = volume(provider_auth=AUTH)
    synced = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd):
        # the temporary file, before its rename: tgt's glob skips it
        name = os.readlink('/proc/self/fd/%d' % fd)
        synced.append(('file', glob.glob(os.path.join(targets_dir,
                                                      '*.conf'))))
        assert not name.endswith('.conf')
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        real_fdatasync(fd)

    def fsync(fd):
        synced.append(('dir' if stat.S_ISDIR(os.fstat(fd).st_mode)
                       else 'file', None))
        real_fsync(fd)

    with mock.patch('os.fdatasync', side_effect=fdatasync), \
            mock.patch('os.fsync', side_effect=fsync):
        export(target, vol)
    path = conf_file(targets_dir, vol)
    assert synced == [('file', []), ('dir', None), ('dir', None)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(targets_dir) == [vol.name + '.conf']


def test_config_file_syncs_run_off_the_event_loop_under_eventlet(
        target, targets_dir):
    """Under eventlet the syncs go to a native thread, not the hub's."""
    vol = volume(provider_auth=AUTH)
    threads = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd):
        threads.append(threading.get_ident())
        real_fdatasync(fd)

    with mock.patch('cinder.monkey_patch.is_patched', return_value=True), \
            mock.patch('os.fdatasync', side_effect=fdatasync):
        export(target, vol)
    assert len(threads) == 1 and threads[0] != threading.get_ident()
    assert os.listdir(targets_dir) == [vol.name + '.conf']


def test_control_port_zero_drives_the_default_tgtd(make_target):
    tgtd = fake_tgt.FakeTgt(control_port=0)    # asserts the port of calls
    target = make_target(fuse_tgt_control_port=0, control=tgtd)
    export(target, volume(provider_auth=AUTH))
    assert tgtd.count('export_target') == 1


def test_iser_is_refused(make_target):
    with pytest.raises(exception.InvalidConfigurationValue):
        make_target(target_protocol='iser')


def test_shared_targets_off():
    assert tgt.TgtFileTarget.SHARED_TARGET_SUPPORT is False


# -- failures of the privileged entry points ------------------------------

def test_missing_lun_fails_cleanly(target, tgtd, targets_dir, caplog):
    vol = volume(provider_auth=AUTH)
    tgtd.missing.add(path_of(vol))   # tgtd cannot open it

    with pytest.raises(exception.ISCSITargetCreateFailed) as err:
        export(target, vol)
    assert 'LUN 1' in str(err.value) and path_of(vol) in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in caplog.text
    # no half-made target, no account and no config file are left behind
    assert tgtd.by_iqn(PREFIX + vol.name) is None
    assert USER not in tgtd.accounts
    assert not os.path.exists(conf_file(targets_dir, vol))


@pytest.mark.parametrize('entry_point,error', [
    ('export_target',
     tgtd_mgmt.TgtdUnavailable('tgtd closed the connection')),
    ('export_target', tgtd_mgmt.TgtdError('out of memory', 2)),
    ('export_target', priv_tgt.TargetRefused(reason='no free tid')),
    ('export_target', exception.InvalidInput(reason='bad')),
], ids=['unavailable', 'tgtd-error', 'refused', 'invalid'])
def test_a_failed_export_leaves_no_config_file(target, targets_dir,
                                               tgtd, entry_point, error):
    vol = volume(provider_auth=AUTH)
    tgtd.fail(entry_point, error)
    with pytest.raises(exception.ISCSITargetCreateFailed):
        export(target, vol)
    assert not os.path.exists(conf_file(targets_dir, vol))
    assert tgtd.targets == {} and tgtd.accounts == {}


def test_a_broken_privsep_daemon_leaves_no_config_file(target, tgtd,
                                                       targets_dir):
    vol = volume(provider_auth=AUTH)
    tgtd.fail('export_target', OSError(32, 'Broken pipe'))
    with pytest.raises(OSError):
        export(target, vol)
    assert not os.path.exists(conf_file(targets_dir, vol))


def test_a_failed_reexport_keeps_the_record(target, tgtd, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    before = read(conf_file(targets_dir, vol))
    tgtd.fail('export_target', tgtd_mgmt.TgtdError('out of memory', 2))
    with pytest.raises(exception.ISCSITargetCreateFailed):
        export(target, vol)
    # the live export still has its record
    assert read(conf_file(targets_dir, vol)) == before


def test_control_failure_hides_the_secret(target, tgtd, targets_dir,
                                          caplog):
    caplog.set_level(logging.DEBUG)
    vol = volume(provider_auth=AUTH)
    tgtd.fail('export_target', tgtd_mgmt.TgtdError(
        'tgtd: account %s with password %s rejected' % (USER, SECRET), 22))

    with pytest.raises(exception.ISCSITargetCreateFailed) as err:
        export(target, vol)
    assert 'rejected' in str(err.value)
    assert SECRET not in str(err.value)
    assert SECRET not in caplog.text
    assert not os.path.exists(conf_file(targets_dir, vol))


def test_hung_tgtd_is_reported(target, tgtd):
    tgtd.fail('export_target', tgtd_mgmt.TgtdTimeout(
        'tgtd did not answer within 30 s'))
    with pytest.raises(exception.ISCSITargetCreateFailed) as err:
        export(target, volume(provider_auth=AUTH))
    assert 'is tgtd or the FUSE mount hung?' in str(err.value)
    assert 'within 30 s' in str(err.value)


def test_busy_target_with_lost_lun_is_repaired_in_place(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    t = tgtd.by_iqn(PREFIX + vol.name)
    t.sessions.append(HOST1)
    del t.luns[1]            # e.g. tgtd started before the FUSE mount

    export(target, vol)
    assert t.luns == {1: path_of(vol)}
    assert t.sessions == [HOST1]      # the session was not dropped
    assert tgtd.by_iqn(PREFIX + vol.name) is t
    assert tgtd.count('reopen_lun') == 1
    assert tgtd.count('delete_target') == 0


def test_idle_target_of_other_settings_is_replaced(make_target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(make_target(iscsi_target_flags=''), vol)
    target = make_target(iscsi_target_flags='direct')   # changed since

    export(target, vol)
    t = tgtd.by_iqn(PREFIX + vol.name)
    assert t.lun_params[1]['bsoflags'] == 'direct'
    assert t.accounts == [USER] and tgtd.accounts[USER] == SECRET
    assert [c[0] for c in tgtd.calls[-3:]] == [
        'show', 'delete_target', 'export_target']


# -- CHAP -----------------------------------------------------------------

def test_chap_from_the_volume_survives_reexport(target, targets_dir):
    vol = volume(provider_auth=AUTH)
    assert export(target, vol)['auth'] == AUTH
    target.remove_export(CTX, vol)
    assert export(target, vol)['auth'] == AUTH
    assert 'incominguser %s %s' % (USER, SECRET) in read(
        conf_file(targets_dir, vol))


def test_chap_is_taken_from_the_volume_without_reading_the_db(target, db):
    """Cinder's Volume object is its DB row: no second query per export."""
    vol = volume()                      # never exported: no CHAP yet
    db.auth[vol.id] = AUTH
    auth = export(target, vol)['auth']
    assert auth.startswith('CHAP ') and auth != AUTH
    assert target.ensure_export(CTX, vol, path_of(vol)) is None
    assert export(target, vol)['auth'] == auth
    assert db.reads == 0


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
    # already right: no listing and no export; set_acl changes nothing
    assert tgtd.calls[n:] == [('set_acl', PREFIX + vol.name, [HOST1])]
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1]


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
    # nobody left: back to CHAP only, as tgt-admin does at boot
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


def attachments(vol, *rows):
    """volume_attachment from (initiator or None, attach_status) rows."""
    vol.volume_attachment = objects.VolumeAttachmentList(objects=[
        objects.VolumeAttachment(
            CTX, id=IDS[200 + i], volume_id=vol.id, attach_status=status,
            connector={'initiator': ini} if ini else None)
        for i, (ini, status) in enumerate(rows)])


def two_hosts(target, tgtd, vol):
    """vol attached to HOST1 and HOST2, as Cinder records it."""
    for host in (HOST1, HOST2):
        export(target, vol, connector={'initiator': host})
        target.initialize_connection(vol, {'initiator': host})
    attach(vol, HOST1, HOST2)
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1, HOST2]


def test_terminate_connection_tells_cinder_whether_others_remain(target,
                                                                 tgtd):
    vol = volume(provider_auth=AUTH, multiattach=True)
    two_hosts(target, tgtd, vol)
    # True: Cinder's attachment delete then does not call remove_export
    assert target.terminate_connection(vol, {'initiator': HOST1}) is True
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST2]
    attach(vol, HOST2)
    assert target.terminate_connection(vol, {'initiator': HOST2}) is False
    assert target.terminate_connection(vol, None, force=True) is False


def test_one_host_twice_is_a_shared_connection(target, tgtd):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol)
    target.initialize_connection(vol, {'initiator': HOST1})
    attach(vol, HOST1, HOST1)
    assert target.terminate_connection(vol, {'initiator': HOST1}) is True
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1]
    attach(vol, HOST1)
    assert target.terminate_connection(vol, {'initiator': HOST1}) is False
    assert acl(tgtd, vol) == ['ALL']


def test_remove_export_keeps_the_target_while_others_are_attached(
        target, tgtd, targets_dir):
    # The legacy detach calls remove_export for every attachment, with
    # the one leaving still listed.
    vol = volume(provider_auth=AUTH, multiattach=True)
    two_hosts(target, tgtd, vol)
    tid = tgtd.by_iqn(PREFIX + vol.name).tid
    target.terminate_connection(vol, {'initiator': HOST1})
    target.remove_export(CTX, vol)

    kept = tgtd.by_iqn(PREFIX + vol.name)
    assert kept is not None and kept.tid == tid and kept.luns
    assert kept.accounts == [USER] and USER in tgtd.accounts
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST2]
    assert 'initiator-name %s' % HOST1 not in read(conf_file(targets_dir,
                                                             vol))
    assert tgtd.count('delete_target') == 0

    attach(vol, HOST2)                          # HOST1's attachment is gone
    target.terminate_connection(vol, {'initiator': HOST2})
    target.remove_export(CTX, vol)
    assert tgtd.targets == {} and tgtd.accounts == {}
    assert not os.path.exists(conf_file(targets_dir, vol))


def test_only_attachments_with_a_connection_keep_the_target(target, tgtd):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol)
    target.initialize_connection(vol, {'initiator': HOST1})
    # a reserved attachment (no connector yet) and a detached one
    attachments(vol, (HOST1, 'attached'), (None, 'reserved'),
                (HOST2, 'detached'))
    assert target.terminate_connection(vol, {'initiator': HOST1}) is False
    target.remove_export(CTX, vol)
    assert tgtd.targets == {} and tgtd.accounts == {}


def test_connectors_as_stored_json_count_too(target, tgtd):
    # manager.remove_export hands the driver a DB row, connector as JSON
    vol = volume(provider_auth=AUTH, multiattach=True)
    two_hosts(target, tgtd, vol)
    row = {'id': vol.id, 'name': vol.name,
           'provider_location': vol.provider_location,
           'provider_auth': vol.provider_auth,
           'volume_attachment': [
               {'attach_status': 'attached',
                'connector': '{"initiator": "%s"}' % h}
               for h in (HOST1, HOST2)]}
    target.remove_export(CTX, row)
    assert tgtd.by_iqn(PREFIX + vol.name) is not None


def test_a_failed_connection_leaves_the_others_their_target(target, tgtd,
                                                            targets_dir):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol, connector={'initiator': HOST1})
    target.initialize_connection(vol, {'initiator': HOST1})
    attach(vol, HOST1)
    # HOST2's attachment: create_export allows it, then the connection
    # fails and Cinder calls remove_export, HOST2 not being recorded
    export(target, vol, connector={'initiator': HOST2})
    tgtd.fail('set_acl', tgtd_mgmt.TgtdTimeout('no answer in 30 s'))
    with pytest.raises(exception.ISCSITargetHelperCommandFailed):
        target.initialize_connection(vol, {'initiator': HOST2})
    target.remove_export(CTX, vol)

    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1]
    assert 'initiator-name %s' % HOST2 not in read(conf_file(targets_dir,
                                                             vol))
    assert USER in tgtd.accounts and tgtd.count('delete_target') == 0
    # the failure was used up: the last detach removes everything
    target.terminate_connection(vol, {'initiator': HOST1})
    target.remove_export(CTX, vol)
    assert tgtd.targets == {} and tgtd.accounts == {}


def test_a_failed_connection_of_an_attached_host_keeps_it(target, tgtd):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol, connector={'initiator': HOST1})
    target.initialize_connection(vol, {'initiator': HOST1})
    attach(vol, HOST1)
    tgtd.fail('set_acl', tgtd_mgmt.TgtdTimeout('no answer in 30 s'))
    with pytest.raises(exception.ISCSITargetHelperCommandFailed):
        target.initialize_connection(vol, {'initiator': HOST1})
    target.remove_export(CTX, vol)
    assert acl(tgtd, vol) == ['0.0.0.0/32', HOST1]


def test_a_failed_first_connection_removes_the_export(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol, connector={'initiator': HOST1})
    tgtd.fail('set_acl', tgtd_mgmt.TgtdTimeout('no answer in 30 s'))
    with pytest.raises(exception.ISCSITargetHelperCommandFailed):
        target.initialize_connection(vol, {'initiator': HOST1})
    target.remove_export(CTX, vol)
    assert tgtd.targets == {} and tgtd.accounts == {}


def test_a_successful_connection_clears_an_earlier_failure(target, tgtd):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol, connector={'initiator': HOST1})
    tgtd.fail('set_acl', tgtd_mgmt.TgtdTimeout('no answer in 30 s'))
    with pytest.raises(exception.ISCSITargetHelperCommandFailed):
        target.initialize_connection(vol, {'initiator': HOST1})
    target.initialize_connection(vol, {'initiator': HOST1})   # a retry
    attach(vol, HOST1)
    target.terminate_connection(vol, {'initiator': HOST1})
    target.remove_export(CTX, vol)
    assert tgtd.targets == {}


def test_a_failed_withdrawal_does_not_hide_the_first_error(target, tgtd,
                                                           caplog):
    vol = volume(provider_auth=AUTH, multiattach=True)
    export(target, vol, connector={'initiator': HOST1})
    target.initialize_connection(vol, {'initiator': HOST1})
    attach(vol, HOST1)
    export(target, vol, connector={'initiator': HOST2})
    tgtd.fail('set_acl', tgtd_mgmt.TgtdTimeout('no answer in 30 s'), times=2)
    with pytest.raises(exception.ISCSITargetHelperCommandFailed):
        target.initialize_connection(vol, {'initiator': HOST2})
    with caplog.at_level(logging.WARNING):
        target.remove_export(CTX, vol)        # does not raise
    assert 'Could not take %s off the ACL' % HOST2 in caplog.text
    assert tgtd.by_iqn(PREFIX + vol.name) is not None


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
    assert not any(name in flat(c) for c in tgtd.calls)


@pytest.mark.parametrize('name', [
    42, ['iqn.1994-05.com.redhat:host1'], {'iqn': 1}, b'iqn.1994-05.a:b',
    3.5,
], ids=['int', 'list', 'dict', 'bytes', 'float'])
def test_non_string_initiators_are_invalid_connectors(target, tgtd,
                                                      targets_dir, name):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    before = read(conf_file(targets_dir, vol))
    n = len(tgtd.calls)
    with pytest.raises(exception.InvalidConnectorException):
        target.validate_connector({'initiator': name})
    with pytest.raises(exception.InvalidConnectorException):
        target.initialize_connection(vol, {'initiator': name})
    with pytest.raises(exception.InvalidConnectorException):
        target.terminate_connection(vol, {'initiator': name})
    with pytest.raises(exception.InvalidConnectorException):
        export(target, volume(1, provider_auth=AUTH),
               connector={'initiator': name})
    assert read(conf_file(targets_dir, vol)) == before
    assert tgtd.calls[n:] == []


# -- config injection -----------------------------------------------------

INJECTED = '\n</target>\n<target iqn.2010-10.org.evil:x>\n    ' \
    'backing-store /etc/shadow\n'


def test_volume_id_cannot_inject_a_target(target, tgtd, targets_dir):
    """The id is rendered into the config's header line."""
    vol = {'id': IDS[0] + INJECTED, 'name': 'volume-' + IDS[0],
           'provider_auth': AUTH, 'provider_location': None}
    with pytest.raises(exception.VolumeBackendAPIException):
        target.create_export(CTX, vol, os.path.join(HOME, vol['name']))
    assert not os.path.exists(os.path.join(targets_dir,
                                           vol['name'] + '.conf'))
    assert tgtd.calls == []


@pytest.mark.parametrize('field', [
    'iqn', 'volume_id', 'path', 'chap_user', 'chap_secret', 'initiators'])
@pytest.mark.parametrize('suffix', ['\n', INJECTED, ' x'])
def test_every_rendered_value_is_fully_matched(field, suffix):
    good = export_record.ExportSpec(
        iqn=PREFIX + 'volume-' + IDS[1], volume_id=IDS[1],
        path=HOME + '/volume-' + IDS[1], chap_user=USER, chap_secret=SECRET,
        initiators=frozenset([HOST1]))
    export_record.check_spec(good)
    if field == 'initiators':
        bad = dataclasses.replace(good,
                                  initiators=frozenset([HOST1 + suffix]))
    else:
        bad = dataclasses.replace(good,
                                  **{field: getattr(good, field) + suffix})
    with pytest.raises((exception.VolumeBackendAPIException,
                        exception.InvalidConnectorException)) as err:
        export_record.check_spec(bad)
    assert SECRET not in str(err.value)


def test_a_trailing_newline_in_the_path_is_refused(target, tgtd,
                                                   targets_dir):
    vol = volume(provider_auth=AUTH)
    with pytest.raises(exception.VolumeBackendAPIException):
        target.create_export(CTX, vol, path_of(vol) + '\n')
    assert not os.path.exists(conf_file(targets_dir, vol))
    assert tgtd.calls == []


def test_a_trailing_newline_in_the_location_is_refused(target):
    vol = volume(provider_auth=AUTH, provider_location=(
        '192.0.2.10:3260,1 %svolume-%s\n 1' % (PREFIX, IDS[0])))
    with pytest.raises(exception.VolumeBackendAPIException):
        target.remove_export(CTX, vol)


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
    assert ('delete_target', PREFIX + vol.name, USER) in tgtd.calls

    target.remove_export(CTX, vol)
    target.remove_export(CTX, volume(1))           # never exported
    assert tgtd.targets == {} and tgtd.accounts == {}
    assert os.listdir(targets_dir) == []


def test_remove_export_drops_an_account_left_without_target(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    del tgtd.targets[tgtd.by_iqn(PREFIX + vol.name).tid]   # account stays
    target.remove_export(CTX, vol)
    assert tgtd.accounts == {}


def test_remove_export_when_tgtd_lost_the_target(target, tgtd, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.restart()
    target.remove_export(CTX, vol)
    assert not os.path.exists(conf_file(targets_dir, vol))


def test_remove_export_keeps_an_account_another_target_uses(target, tgtd):
    a, b = volume(0, provider_auth=AUTH), volume(1, provider_auth=auth_of(1))
    export(target, a)
    export(target, b)
    # e.g. bound at boot by tgt-admin from an old config file
    tgtd.by_iqn(PREFIX + b.name).accounts.append(USER)
    target.remove_export(CTX, a)
    assert USER in tgtd.accounts


def test_remove_export_failure_keeps_the_record(target, tgtd, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.fail('delete_target', tgtd_mgmt.TgtdTimeout('no answer in 30 s'))
    with pytest.raises(exception.ISCSITargetRemoveFailed):
        target.remove_export(CTX, vol)
    # still exported and still on record, so a retry finishes the job
    assert tgtd.by_iqn(PREFIX + vol.name) is not None
    assert os.path.exists(conf_file(targets_dir, vol))
    target.remove_export(CTX, vol)
    assert tgtd.targets == {} and tgtd.accounts == {}
    assert not os.path.exists(conf_file(targets_dir, vol))


# -- ensure_export --------------------------------------------------------

def in_use(n, **kw):
    vol = volume(n, provider_auth=auth_of(n), status='in-use', **kw)
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
    assert tgtd.calls[n:] == [('show',)]


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
    for vol in vols:
        t = tgtd.by_iqn(PREFIX + vol.name)
        assert t.luns == {1: path_of(vol)}
        assert sorted(t.acl) == ['0.0.0.0/32', HOST1]
        _chap, user, secret = vol.provider_auth.split()
        assert t.accounts == [user] and tgtd.accounts[user] == secret
    # one listing for the burst, then one export per lost target (which
    # checks its own work: no listing after it)
    assert [c[0] for c in tgtd.calls[n:]] == (
        ['show'] + ['export_target'] * len(vols))


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
    target = make_target(iscsi_write_cache='off',
                         iscsi_target_flags='direct,sync')
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    t = tgtd.by_iqn(PREFIX + vol.name)
    t.sessions.append(HOST1)
    n = len(tgtd.calls)

    target.extend_target(vol)

    # tgtd separates open flags with ':'; the serial is the volume id's
    assert tgtd.calls[n:] == [
        ('describe', PREFIX + vol.name),
        ('reopen_lun', PREFIX + vol.name, path_of(vol), 'direct:sync',
         False, serial_of(vol), False)]
    params = t.lun_params[1]
    assert params['scsi_id'] == params['scsi_sn'] == serial_of(vol)
    assert params['mode_page'] == priv_tgt.WRITE_CACHE_OFF_MODE_PAGE
    assert t.luns == {1: path_of(vol)} and t.sessions == [HOST1]
    assert tgtd.by_iqn(PREFIX + vol.name) is t   # the same target
    assert tgtd.count('export_target') == 1      # only the first export


def test_reopen_lun_after_a_fuse_remount(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    assert target.reopen_lun(vol, '/mnt/other/' + vol.name)
    assert tgtd.by_iqn(PREFIX + vol.name).luns == {
        1: '/mnt/other/' + vol.name}


def test_reopen_lun_reports_a_file_tgtd_cannot_open(target, tgtd):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.missing.add(path_of(vol))
    with pytest.raises(exception.ISCSITargetHelperCommandFailed):
        target.reopen_lun(vol)


def test_reopen_or_extend_without_target_is_a_noop(target, tgtd):
    assert target.reopen_lun(volume(provider_auth=AUTH)) is False
    target.extend_target(volume(provider_auth=AUTH))
    iqn = PREFIX + volume().name
    assert tgtd.calls == [('describe', iqn), ('describe', iqn)]


def test_reopen_all_reopens_our_luns_in_the_directory(target, tgtd,
                                                      targets_dir):
    ours = [volume(n, provider_auth=auth_of(n)) for n in range(2)]
    for vol in ours:
        export(target, vol)
    elsewhere = volume(2, provider_auth=auth_of(2))
    target.create_export(CTX, elsewhere, '/srv/other/' + elsewhere.name)
    tgtd.by_iqn(PREFIX + ours[0].name).sessions.append(HOST1)
    # A target of someone else on the same directory: no config of ours.
    stranger = volume(3, provider_auth=auth_of(3))
    export(target, stranger)
    os.unlink(conf_file(targets_dir, stranger))
    n = len(tgtd.calls)

    assert target.reopen_all(HOME + '/') == 2

    reopened = [c[1] for c in tgtd.calls[n:] if c[0] == 'reopen_lun']
    assert sorted(reopened) == sorted(PREFIX + v.name for v in ours)
    for vol in ours:
        t = tgtd.by_iqn(PREFIX + vol.name)
        assert t.luns == {1: path_of(vol)}
        assert t.lun_params[1]['scsi_id'] == vol.id.replace('-', '')
    assert tgtd.by_iqn(PREFIX + ours[0].name).sessions == [HOST1]
    assert tgtd.count('export_target') == 4      # the exports only


def test_reopen_all_tries_every_lun_and_a_retry_finishes(target, tgtd):
    vols = [volume(n, provider_auth=auth_of(n)) for n in range(3)]
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
    assert tgtd.calls == [('show',)]


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
    # the secret reaches tgtd only as export_target's argument (over the
    # privsep socket; tests/functional/test_tgtd_privsep.py checks argv)
    assert {c[0] for c in tgtd.calls if SECRET in flat(c)} == {
        'export_target'}


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


def test_parse_targets_of_a_listing():
    targets = tgtd_mgmt.parse_targets(SHOW)
    s = targets['iqn.2010-10.org.openstack:volume-s']
    assert (s.tid, s.accounts, s.nexus) == (1, ['user1'], True)
    assert s.luns == {
        0: tgtd_mgmt.Lun(None, 'IET     00010000', 'beaf10', '', False),
        1: tgtd_mgmt.Lun('/tmp/exp/m2/v', 'IET     00010001', 'beaf11', '',
                         False)}
    assert s.acl == ['0.0.0.0/32', 'iqn.2004-10.com.ubuntu:01:aaa']
    t = targets['iqn.2010-10.org.openstack:volume-t']
    assert (t.tid, t.accounts, t.acl, t.nexus) == (2, [], ['ALL'], False)
    assert {n: lun.path for n, lun in t.luns.items()} == {0: None}
    assert tgtd_mgmt.parse_targets('') == {}


def test_parse_config_round_trip():
    spec = export_record.ExportSpec(
        iqn=PREFIX + 'volume-1', volume_id=IDS[1], path='/mnt/v/volume-1',
        chap_user=USER, chap_secret=SECRET,
        initiators=frozenset([HOST1, HOST2]))
    text = export_record.render_config(spec, write_cache=True, bsoflags='')
    assert export_record.parse_config(text) == spec
    assert export_record.parse_config('garbage') is None


# -- locking --------------------------------------------------------------

def test_changes_to_one_volume_are_serialised(target):
    """Read, change, write of one record file: one thread at a time."""
    a, b = PREFIX + 'volume-' + IDS[0], PREFIX + 'volume-' + IDS[1]
    got = {}

    def take(iqn):
        with target._locked(iqn):
            got[iqn] = True

    with target._locked(a):
        other = threading.Thread(target=take, args=(b,))
        other.start()
        other.join(5)
        assert got == {b: True}         # another volume does not wait
        same = threading.Thread(target=take, args=(a,))
        same.start()
        same.join(0.2)
        assert a not in got             # the same volume does
    same.join(5)
    assert got == {a: True, b: True}


# -- reconciliation after tgtd restarted empty -------------------------------

def test_reconcile_restores_every_lost_export(target, tgtd):
    vols = [volume(n, provider_auth=auth_of(n)) for n in range(3)]
    for vol in vols:
        export(target, vol)
    target.initialize_connection(vols[0], {'initiator': HOST1})
    before = {PREFIX + v.name: tgtd.by_iqn(PREFIX + v.name) for v in vols}
    tgtd.restart()
    assert target.reconcile(HOME) == 3
    for vol in vols:
        now = tgtd.by_iqn(PREFIX + vol.name)
        old = before[PREFIX + vol.name]
        assert now.luns == old.luns and now.accounts == old.accounts
    assert HOST1 in tgtd.by_iqn(PREFIX + vols[0].name).acl
    assert sorted(tgtd.accounts) == sorted(a.split()[1] for a in
                                           (auth_of(n) for n in range(3)))
    assert target.reconcile(HOME) == 0          # nothing lost any more


def test_reconcile_leaves_removed_and_foreign_exports_alone(
        make_target, tgtd, targets_dir):
    target = make_target()
    kept = volume(0, provider_auth=AUTH)
    removed = volume(1, provider_auth=auth_of(1))
    export(target, kept)
    export(target, removed)
    target.remove_export(CTX, removed)
    tgtd.restart()
    assert target.reconcile('/somewhere/else') == 0
    assert tgtd.by_iqn(PREFIX + kept.name) is None
    assert target.reconcile(HOME) == 1
    assert tgtd.by_iqn(PREFIX + removed.name) is None
    assert tgtd.by_iqn(PREFIX + kept.name) is not None


def test_reconcile_without_exports_asks_tgtd_nothing(target, tgtd):
    assert target.reconcile(HOME) == 0
    assert tgtd.calls == []


def test_a_failed_reconcile_is_tried_again(target, tgtd, targets_dir):
    vol = volume(provider_auth=AUTH)
    export(target, vol)
    tgtd.restart()
    tgtd.fail('export_target', tgtd_mgmt.TgtdError('no', 22))
    assert target.reconcile(HOME) == 0
    assert os.path.exists(conf_file(targets_dir, vol))
    assert target.reconcile(HOME) == 1


# -- read-only LUNs ----------------------------------------------------------

def test_read_only_export_survives_reexport_and_reopen(target, tgtd,
                                                       targets_dir):
    vol = volume(provider_auth=AUTH)
    target.create_export(CTX, vol, path_of(vol), readonly=True)
    vol.provider_location = '192.0.2.10:3260,1 %s%s 1' % (PREFIX, vol.name)
    lun = tgtd.by_iqn(PREFIX + vol.name).lun_params[1]
    assert lun['readonly'] is True
    assert 'readonly 1' in read(conf_file(targets_dir, vol))
    target.reopen_lun(vol)
    assert tgtd.by_iqn(PREFIX + vol.name).lun_params[1]['readonly'] is True
    tgtd.restart()
    target.ensure_export(CTX, vol, path_of(vol))
    assert tgtd.by_iqn(PREFIX + vol.name).lun_params[1]['readonly'] is True
    tgtd.restart()
    assert target.reconcile(HOME) == 1
    assert tgtd.by_iqn(PREFIX + vol.name).lun_params[1]['readonly'] is True


def test_read_write_target_is_replaced_by_a_read_only_one(target, tgtd):
    vol = volume(provider_auth=AUTH)
    target.create_export(CTX, vol, path_of(vol))
    assert tgtd.by_iqn(PREFIX + vol.name).lun_params[1]['readonly'] is False
    target.create_export(CTX, vol, path_of(vol), readonly=True)
    assert tgtd.by_iqn(PREFIX + vol.name).lun_params[1]['readonly'] is True


def test_iscsitarget_hooks_it_replaces_refuse_and_show_target_works(
        target, tgtd):
    """Only ISCSITarget's own create/remove/ensure_export use the hooks."""
    vol = volume(provider_auth=AUTH)
    for hook, args in [('_get_iscsi_target', (CTX, vol.id)),
                       ('_get_target_and_lun', (CTX, vol)),
                       ('create_iscsi_target', (PREFIX + vol.name, 1, 1,
                                                path_of(vol), None)),
                       ('remove_iscsi_target', (1, 1, vol.id, vol.name))]:
        with pytest.raises(NotImplementedError):
            getattr(target, hook)(*args)
    assert tgtd.calls == []
    with pytest.raises(exception.NotFound):
        target.show_target(None, PREFIX + vol.name)
    export(target, vol)
    target.show_target(None, PREFIX + vol.name)     # found: no exception
    assert target._get_target(PREFIX + vol.name) == tgtd.by_iqn(
        PREFIX + vol.name).tid
