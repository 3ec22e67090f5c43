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
"""A flush is acknowledged only once an fsync reached the volume's file.

For every LUN setting the driver's options can produce (write cache x
bsoflags), a real tgtd serves a volume file on faultfs, which counts the
FUSE fsync requests it gets, and qemu-io writes and flushes over iSCSI
(SYNCHRONIZE CACHE). Two proofs: the flush makes faultfs see an fsync of
the file, and while faultfs fails every fsync with EIO the initiator
sees the write or the flush fail. A backing store that acknowledges
SYNCHRONIZE CACHE without fdatasync (tgtd's bs-type aio) fails both.
"""

import errno
import os
import subprocess

import pytest

from cinder import context
from cinder import objects

from fuse_cinder.allinone import sandbox
from fuse_cinder import options
from fuse_cinder.privileged import tgt as priv_tgt
from fuse_cinder.targets import tgt
from tests.functional import tgtd
from tests.functional import volumes

MiB = 1 << 20
CTX = context.get_admin_context()
VOLUME_ID = '00000014-0000-4000-8000-000000000014'

objects.register_all()
make_tgtd = tgtd.make_tgtd

pytestmark = tgtd.requirements('qemu-io')


SETTINGS = [(wc, f) for wc in ('on', 'off')
            for f in options.BSOFLAGS_CHOICES]


@pytest.fixture
def daemon(make_tgtd):
    return make_tgtd()


@pytest.fixture
def lun(fs, backend_conf, tmp_path, daemon, tgt_privsep_in_process,
        request):
    """(url, file name) of a volume exported with this test's setting."""
    write_cache, flags = request.param
    home = os.path.join(fs.mountpoint, 'volumes')
    os.mkdir(os.path.join(fs.backing, 'volumes'))
    conf = backend_conf(volumes_dir=str(tmp_path / 'targets'),
                        volumes_home=home,
                        fuse_tgt_control_port=daemon.control_port,
                        target_ip_address='127.0.0.1',
                        target_port=daemon.portal_port,
                        iscsi_write_cache=write_cache,
                        iscsi_target_flags=flags)
    target = tgt.TgtFileTarget(configuration=conf, db=sandbox.NoDB())
    vol = volumes.volume(VOLUME_ID, size=1, status='in-use')
    path = os.path.join(home, vol.name)
    with open(path, 'wb') as f:
        f.truncate(16 * MiB)
    data = target.create_export(CTX, vol, path)
    _method, user, secret = data['auth'].split()
    iqn = data['location'].split()[1]
    yield daemon.url(iqn, priv_tgt.LUN, user=user, secret=secret), vol.name
    target.remove_export(CTX, vol)


def qemu_io(url, *commands):
    """qemu-io's output; it exits 0 even when a command failed."""
    argv = ['qemu-io', '-f', 'raw', '-t', 'none']
    for command in commands:
        argv += ['-c', command]
    res = subprocess.run(argv + [url], capture_output=True, text=True,
                         timeout=120)
    return res.returncode, res.stdout + res.stderr


def fsyncs(fs):
    return fs.stats()['calls'].get('fsync', 0)


def ids(setting):
    return 'write-cache-%s-bsoflags-%s' % (setting[0], setting[1] or 'none')


@pytest.mark.parametrize('lun', SETTINGS, ids=[ids(s) for s in SETTINGS],
                         indirect=True)
def test_flush_reaches_the_file(fs, lun):
    url, name = lun
    before = fsyncs(fs)
    code, out = qemu_io(url, 'write -P 0x5a 0 1M', 'flush',
                        'read -P 0x5a 0 1M')
    assert code == 0 and 'failed' not in out and 'error' not in out, out
    assert fsyncs(fs) > before, 'SYNCHRONIZE CACHE reached no fsync'
    with open(os.path.join(fs.backing, 'volumes', name), 'rb') as f:
        assert f.read(MiB) == b'\x5a' * MiB


@pytest.mark.parametrize('lun', SETTINGS, ids=[ids(s) for s in SETTINGS],
                         indirect=True)
def test_a_failed_fsync_fails_the_initiator(fs, lun):
    """The acknowledgement waits for fsync: its error reaches the guest."""
    url, _name = lun
    fs.inject('fsync', errno.EIO)
    before = fsyncs(fs)
    code, out = qemu_io(url, 'write -P 0x33 0 64k', 'flush')
    assert fsyncs(fs) > before, out
    assert code != 0 or 'failed' in out, (
        'the initiator was told its data is stable though every fsync '
        'failed:\n' + out)
