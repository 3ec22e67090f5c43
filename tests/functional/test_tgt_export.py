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
"""TgtFileTarget with a real tgtd, a real bindfs mount and real initiators.

The initiators are libiscsi's tools and qemu's iSCSI driver, both in user
space, all on 127.0.0.1 (tgtd ports: see tests/functional/tgtd.py).
"""

import os
import subprocess

import pytest

from cinder import context
from cinder import exception
from cinder import objects

from fuse_cinder.allinone import sandbox
from fuse_cinder.targets import tgt
from fuse_cinder.targets import tgtd_mgmt
from tests.functional import tgtd
from tests.functional import volumes

MiB = 1 << 20
CTX = context.get_admin_context()
IDS = ['%08d-0000-4000-8000-0000000000%02d' % (i, i) for i in range(10)]
HOST1 = 'iqn.1994-05.com.redhat:fuse-cinder-host1'
HOST2 = 'iqn.1994-05.com.redhat:fuse-cinder-host2'
STRANGER = 'iqn.1994-05.com.redhat:stranger'

objects.register_all()
make_tgtd = tgtd.make_tgtd

pytestmark = tgtd.requirements('bindfs', 'qemu-img', 'iscsi-inq',
                               'iscsi-ls', 'iscsi-readcapacity16')


class Initiator:
    """qemu-img and libiscsi as one named initiator with CHAP."""

    def __init__(self, daemon, workdir, iqn, auth, name=HOST1):
        _method, self.user, self.secret = auth.split()
        self.daemon, self.iqn, self.name = daemon, iqn, name
        self.secret_file = os.path.join(workdir, 'chap-%s' % name[-5:])
        with open(os.open(self.secret_file,
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  'w') as f:
            f.write(self.secret)
        self.workdir = workdir

    def _opts(self, offset, size):
        return ','.join([
            'driver=raw', 'offset=%d' % offset, 'size=%d' % size,
            'file.driver=iscsi', 'file.transport=tcp',
            'file.portal=%s' % self.daemon.portal, 'file.target=%s' % self.iqn,
            'file.lun=1', 'file.user=%s' % self.user,
            'file.password-secret=sec0', 'file.initiator-name=%s' % self.name])

    def _qemu_img(self, *args):
        return subprocess.run(
            ['qemu-img', 'convert', '--object',
             'secret,id=sec0,file=%s' % self.secret_file] + list(args),
            capture_output=True, text=True, timeout=120)

    def write(self, offset, data):
        src = os.path.join(self.workdir, 'src.bin')
        with open(src, 'wb') as f:
            f.write(data)
        res = self._qemu_img('-n', '-f', 'raw', '--target-image-opts', src,
                             self._opts(offset, len(data)))
        assert res.returncode == 0, res.stderr

    def read(self, offset, size):
        """The bytes, or None when the target refuses or fails the read."""
        out = os.path.join(self.workdir, 'out.bin')
        if os.path.exists(out):
            os.unlink(out)
        res = self._qemu_img('--image-opts', self._opts(offset, size),
                             '-O', 'raw', out)
        if res.returncode != 0:
            return None
        with open(out, 'rb') as f:
            return f.read()

    def url(self, secret=None):
        return self.daemon.url(self.iqn, user=self.user,
                               secret=secret or self.secret)

    def inquiry(self, name=None, secret=None):
        """(exit code, output) of iscsi-inq: does login succeed?"""
        res = subprocess.run(['iscsi-inq', '-i', name or self.name,
                              self.url(secret)],
                             capture_output=True, text=True, timeout=60)
        return res.returncode, res.stdout + res.stderr

    def capacity(self):
        res = subprocess.run(['iscsi-readcapacity16', '-i', self.name,
                              self.url()],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        for line in res.stdout.splitlines():
            if line.startswith('Total size:'):
                return int(line.split(':')[1])
        raise AssertionError(res.stdout)


def discovered(daemon):
    res = subprocess.run(['iscsi-ls', '-i', STRANGER,
                          'iscsi://%s' % daemon.portal],
                         capture_output=True, text=True, timeout=60)
    return res.stdout


@pytest.fixture
def fuse(tmp_path):
    with sandbox.ScratchMount(tmp_path / 'fuse') as m:
        yield m


@pytest.fixture
def daemon(make_tgtd):
    return make_tgtd()


@pytest.fixture
def make_target(backend_conf, tmp_path, daemon, tgt_privsep_in_process):
    def make(**opts):
        values = dict(volumes_dir=str(tmp_path / 'targets'),
                      fuse_tgt_control_port=daemon.control_port,
                      target_ip_address='127.0.0.1',
                      target_port=daemon.portal_port)
        values.update(opts)
        return tgt.TgtFileTarget(configuration=backend_conf(**values),
                                 db=sandbox.NoDB())
    return make


@pytest.fixture
def target(make_target):
    return make_target()


@pytest.fixture
def new_volume(fuse):
    def make(n=0, size=64 * MiB):
        vol = volumes.volume(IDS[n], size=1, status='in-use')
        os.makedirs(fuse.volumes_home, exist_ok=True)
        with open(os.path.join(fuse.volumes_home, vol.name), 'wb') as f:
            f.truncate(size)
        return vol
    return make


def path_of(fuse, vol):
    return os.path.join(fuse.volumes_home, vol.name)


def export(target, vol, fuse, connector=None):
    """create_export, keeping its result on the volume as Cinder does."""
    data = target.create_export(CTX, vol, path_of(fuse, vol),
                                connector=connector)
    vol.provider_location = data['location']
    vol.provider_auth = data['auth']
    return data


def attached(daemon, tmp_path, target, vol, name=HOST1):
    """initialize_connection, then an initiator built from its answer."""
    info = target.initialize_connection(vol, {'initiator': name})['data']
    assert info['target_portal'] == daemon.portal
    assert info['target_lun'] == 1
    auth = '%s %s %s' % (info['auth_method'], info['auth_username'],
                         info['auth_password'])
    return Initiator(daemon, str(tmp_path), info['target_iqn'], auth, name)


def read_file(path, offset, size):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(size)


@pytest.mark.parametrize('opts,flags', [
    ({}, 'direct'),
    ({'iscsi_write_cache': 'off', 'iscsi_target_flags': 'direct,sync'},
     'sync:direct'),
    ({'iscsi_target_flags': ''}, ''),
], ids=['defaults', 'direct-sync-nocache', 'buffered'])
def test_data_round_trip(daemon, fuse, make_target, new_volume, tmp_path,
                         opts, flags):
    target = make_target(**opts)
    vol = new_volume()
    export(target, vol, fuse)
    ini = attached(daemon, tmp_path, target, vol)
    data = os.urandom(4 * MiB)

    ini.write(1 * MiB, data)

    assert ini.read(1 * MiB, len(data)) == data
    # it is in the file on the FUSE mount and in the directory under it
    assert read_file(path_of(fuse, vol), 1 * MiB, len(data)) == data
    assert read_file(fuse.backing_path(vol.name), 1 * MiB, len(data)) == data
    assert ini.read(40 * MiB, MiB) == bytes(MiB)       # sparse stays zero
    assert 'Backing store flags: %s\n' % flags in daemon.show()


def login_keys(daemon, tid):
    """{key: value} of the iSCSI login keys tgtd offers on a target."""
    out = daemon.tgtadm('--lld', 'iscsi', '--mode', 'target', '--op',
                        'show', '--tid', str(tid))
    return dict(line.strip().split('=', 1) for line in out.splitlines()
                if '=' in line)


@pytest.mark.parametrize('opts,keys', [
    ({}, {'MaxRecvDataSegmentLength': '262144', 'MaxBurstLength': '262144',
          'FirstBurstLength': '262144', 'ImmediateData': 'Yes',
          'InitialR2T': 'No'}),
    ({'fuse_tgt_max_recv_data_segment_length': 65536,
      'fuse_tgt_max_burst_length': 131072,
      'fuse_tgt_first_burst_length': 8192,
      'fuse_tgt_immediate_data': False, 'fuse_tgt_initial_r2t': True},
     {'MaxRecvDataSegmentLength': '65536', 'MaxBurstLength': '131072',
      'FirstBurstLength': '8192', 'ImmediateData': 'No',
      'InitialR2T': 'Yes'}),
], ids=['defaults', 'configured'])
def test_targets_offer_the_configured_login_keys(daemon, fuse, make_target,
                                                 new_volume, tmp_path, opts,
                                                 keys):
    """tgtd's 8 KiB data PDUs are replaced, and data still round-trips."""
    target = make_target(**opts)
    vol = new_volume()
    data = export(target, vol, fuse)
    tid = int(data['location'].split(',')[1].split()[0])
    offered = login_keys(daemon, tid)
    assert {k: offered.get(k) for k in keys} == keys
    ini = attached(daemon, tmp_path, target, vol)
    payload = os.urandom(3 * MiB)
    ini.write(0, payload)
    assert ini.read(0, len(payload)) == payload
    assert read_file(fuse.backing_path(vol.name), 0, len(payload)) == payload


def test_wrong_chap_is_refused(daemon, fuse, target, new_volume, tmp_path):
    vol = new_volume()
    export(target, vol, fuse)
    ini = attached(daemon, tmp_path, target, vol)
    assert ini.inquiry()[0] == 0
    code, out = ini.inquiry(secret='WrongSecret12345')
    assert code != 0 and 'Authentication failure' in out


def test_initiator_restriction(daemon, fuse, target, new_volume, tmp_path):
    vol = new_volume()
    export(target, vol, fuse, connector={'initiator': HOST1})
    ini = attached(daemon, tmp_path, target, vol)
    assert ini.inquiry()[0] == 0
    code, out = ini.inquiry(name=STRANGER)
    assert code != 0 and 'Failed to log in' in out
    assert ini.inquiry(name=HOST2)[0] != 0

    # a second host (multi-attach) gets in, the first stays in
    attached(daemon, tmp_path, target, vol, name=HOST2)
    assert ini.inquiry(name=HOST2)[0] == 0
    assert ini.inquiry()[0] == 0

    # the first host leaves; the second one still works
    vol.volume_attachment = objects.VolumeAttachmentList(objects=[
        objects.VolumeAttachment(CTX, id=IDS[8], volume_id=vol.id,
                                 attach_status='attached',
                                 connector={'initiator': HOST1}),
        objects.VolumeAttachment(CTX, id=IDS[9], volume_id=vol.id,
                                 attach_status='attached',
                                 connector={'initiator': HOST2})])
    target.terminate_connection(vol, {'initiator': HOST1})
    assert ini.inquiry()[0] != 0
    assert ini.inquiry(name=HOST2)[0] == 0


def test_remove_export_makes_the_target_disappear(daemon, fuse, target,
                                                  new_volume, tmp_path):
    vol = new_volume()
    export(target, vol, fuse)
    iqn = target._iqn(vol)
    assert iqn in discovered(daemon)
    conf = target._conf_path(iqn)
    assert os.path.exists(conf)

    target.remove_export(CTX, vol)

    assert iqn not in discovered(daemon)
    assert iqn not in daemon.show()
    assert not os.path.exists(conf)
    target.remove_export(CTX, vol)                  # idempotent


def test_ensure_export_after_tgtd_restart(daemon, fuse, make_target,
                                          new_volume, tmp_path):
    target = make_target()
    vols = [new_volume(n) for n in range(3)]
    for vol in vols:
        export(target, vol, fuse, connector={'initiator': HOST1})
    ini = attached(daemon, tmp_path, target, vols[1])
    data = os.urandom(2 * MiB)
    ini.write(3 * MiB, data)

    daemon.restart()                                # crash: all gone
    assert ini.inquiry()[0] != 0

    restarted = make_target()                       # cinder-volume restart
    for vol in vols:
        restarted.ensure_export(CTX, vol, path_of(fuse, vol))

    assert ini.read(3 * MiB, len(data)) == data
    assert ini.inquiry(name=STRANGER)[0] != 0       # still restricted
    shown = tgtd_mgmt.parse_targets(daemon.show())
    assert sorted(shown) == sorted(target._iqn(v) for v in vols)


def test_ensure_export_leaves_a_live_target_alone(daemon, fuse, target,
                                                  new_volume, tmp_path):
    vol = new_volume()
    export(target, vol, fuse)
    ini = attached(daemon, tmp_path, target, vol)
    before = tgtd_mgmt.parse_targets(daemon.show())
    target.ensure_export(CTX, vol, path_of(fuse, vol))
    assert tgtd_mgmt.parse_targets(daemon.show()) == before
    assert ini.inquiry()[0] == 0


def test_extend_target_shows_the_new_size(daemon, fuse, target, new_volume,
                                          tmp_path):
    vol = new_volume(size=64 * MiB)
    export(target, vol, fuse)
    ini = attached(daemon, tmp_path, target, vol)
    data = os.urandom(MiB)
    ini.write(0, data)
    assert ini.capacity() == 64 * MiB

    os.truncate(path_of(fuse, vol), 128 * MiB)
    target.extend_target(vol)

    assert ini.capacity() == 128 * MiB
    assert ini.read(0, MiB) == data
    ini.write(100 * MiB, data)
    assert read_file(path_of(fuse, vol), 100 * MiB, MiB) == data


def test_reopen_lun_after_fuse_daemon_crash(daemon, fuse, target,
                                            new_volume, tmp_path):
    vol = new_volume()
    export(target, vol, fuse)
    ini = attached(daemon, tmp_path, target, vol)
    data = os.urandom(MiB)
    ini.write(0, data)

    fuse.kill()                                     # FUSE daemon dies
    subprocess.run(['umount', '-l', fuse.mountpoint], check=True)
    fuse.start()                                    # and is remounted
    # tgtd still holds the dead mount's file: uncached reads fail
    assert ini.read(32 * MiB, MiB) is None

    assert target.reopen_lun(vol)

    assert ini.read(32 * MiB, MiB) == bytes(MiB)
    assert ini.read(0, MiB) == data


def test_export_of_a_missing_file_fails_cleanly(daemon, fuse, target,
                                                new_volume):
    vol = new_volume()
    os.unlink(path_of(fuse, vol))
    with pytest.raises(exception.ISCSITargetCreateFailed) as err:
        export(target, vol, fuse)
    assert 'LUN 1' in str(err.value)
    assert target._iqn(vol) not in daemon.show()
    # no CHAP account and no config file left either
    assert sandbox.list_accounts(daemon.control_port) == []
    assert not os.path.exists(target._conf_path(target._iqn(vol)))


def test_read_only_lun_refuses_writes(daemon, fuse, target, new_volume,
                                      tmp_path):
    """os-export of a read-only volume: tgtd itself fails every write."""
    vol = new_volume()
    data = os.urandom(MiB)
    with open(path_of(fuse, vol), 'r+b') as f:
        f.write(data)
    exported = target.create_export(CTX, vol, path_of(fuse, vol),
                                    readonly=True)
    vol.provider_location = exported['location']
    vol.provider_auth = exported['auth']
    ini = attached(daemon, tmp_path, target, vol)
    assert ini.read(0, MiB) == data
    with pytest.raises(AssertionError):
        ini.write(0, bytes(MiB))
    assert read_file(path_of(fuse, vol), 0, MiB) == data
    shown = tgtd_mgmt.parse_targets(daemon.show())
    assert shown[ini.iqn].luns[1].readonly is True
    target.reopen_lun(vol)
    shown = tgtd_mgmt.parse_targets(daemon.show())
    assert shown[ini.iqn].luns[1].readonly is True
    target.remove_export(CTX, vol)
