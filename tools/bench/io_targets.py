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
"""What section 5 measures: LUNs and files full of data, qemu-img bench.

Each target is something ``qemu-img bench`` opens: a LUN exported by the
driver (one per tgt setting, and on fuse-overlayfs), a LUN on a plain
ext4 file set up by hand, the file itself with O_DIRECT (the ceiling), or
a LUN on tgtd's null backing store (iSCSI alone, with no file behind it).
"""

import collections
import os
import subprocess
import time

from cinder.volume import volume_utils

from bench import environment
from bench import tgt_options
from bench.units import median
from bench.units import MiB
from fuse_cinder import options
from fuse_cinder.targets import tgt as target_tgt
from fuse_cinder.targets import tgtd_mgmt


class IoTarget:
    """Something qemu-img bench can open: a LUN URL or a file."""

    def __init__(self, label, url, caches, kind):
        self.label = label
        self.url = url
        self.caches = caches      # files to drop from the page cache
        self.kind = kind
        self.results = collections.defaultdict(list)
        self.overhead = 0.0


def qemu_bench(target, args):
    """Wall time of one qemu-img bench run, minus open/close overhead.

    The wall time includes the flush qemu-img issues when it closes the
    image, which its own "Run completed" figure leaves out.
    """
    cmd = ['qemu-img', 'bench', '-f', 'raw', '-t', 'none', '-d', '16']
    cmd += args + [target.url]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError('%s failed: %s' % (' '.join(cmd[:-1]),
                                              res.stderr.strip()))
    return max(elapsed - target.overhead, 1e-6)


def manual_lun(daemon, vol, path, bstype='rdwr'):
    """A LUN the driver would not make, set up as it sets up its own.

    The driver's entry points refuse a file off FUSE, and offer no other
    backing store than rdwr; the benchmark, as root, talks to tgtd's
    socket itself for these baselines. Returns the LUN's URL.
    """
    # tgtd's null backing store takes no bsoflags.
    bsoflags = tgt_options.DEFAULT_SETTING[1] if bstype == 'rdwr' else ''
    iqn = 'iqn.2010-10.org.openstack:' + vol.name
    user = volume_utils.generate_username()
    secret = volume_utils.generate_password()
    client = tgtd_mgmt.TgtdClient(daemon.control_port)
    tid = max((t.tid for t in client.targets().values()), default=0) + 1
    client.new_target(tid, iqn)
    client.new_lun(tid, 1, path, bstype=bstype,
                   bsoflags=bsoflags.replace(',', ':'))
    serial = vol.id.replace('-', '')
    client.update_lun(tid, 1, 'scsi_id=%s,scsi_sn=%s' % (serial, serial))
    conf = options.CONF.backend_defaults
    for key, name in target_tgt.SESSION_INT_OPTS:
        client.update_target(tid, key, getattr(conf, name))
    for key, name in target_tgt.SESSION_BOOL_OPTS:
        client.update_target(tid, key, 'Yes' if getattr(conf, name) else 'No')
    client.new_account(user, secret)
    client.bind_account(tid, user)
    client.bind_initiator_address(tid, 'ALL')
    return daemon.url(iqn, 1, user=user, secret=secret)


def lun_url(daemon, connection):
    data = connection['data']
    return daemon.url(data['target_iqn'], data['target_lun'],
                      user=data['auth_username'],
                      secret=data['auth_password'])


class Targets:
    """The targets of one tgtd, in the order they are added."""

    def __init__(self, env, daemon, lun):
        self.env = env
        self.daemon = daemon
        self.lun = lun
        self.fill = bytes([0x3c]) * MiB
        self.targets = []

    def lun_file(self, dirname):
        # Full of data from the start, so that every read test reads
        # data rather than holes, whatever the write tests covered.
        vol = self.env.volume(1)
        path = os.path.join(dirname, vol.name)
        with open(path, 'wb') as f:
            for _i in range(self.lun // MiB):
                f.write(self.fill)
            f.flush()
            os.fsync(f.fileno())
        return vol, path

    @staticmethod
    def caches(mount, dirname, name):
        path = os.path.join(dirname, name)
        if mount is None:
            return [path]
        return [path, mount.backing_path(os.path.join('io', name))]

    def add_lun(self, label, kind, mount, dirname, daemon=None, **opts):
        daemon = daemon or self.daemon
        drv = self.env.driver(dirname, daemon, **opts)
        vol, _path = self.lun_file(dirname)
        connection = environment.export(drv, vol, environment.QEMU_CONNECTOR)
        self.targets.append(IoTarget(
            label, lun_url(daemon, connection),
            self.caches(mount, dirname, vol.name), kind))

    def add_file(self, label, kind, mount, dirname):
        vol, path = self.lun_file(dirname)
        self.targets.append(IoTarget(label, path, self.caches(
            mount, dirname, vol.name), kind))

    def add_plain_lun(self, label, dirname):
        vol, path = self.lun_file(dirname)
        self.targets.append(IoTarget(
            label, manual_lun(self.daemon, vol, path), [path], 'plain'))

    def add_null_lun(self, label):
        """iSCSI alone: tgtd's null store acknowledges every command.

        Writes are dropped and reads answered without reading anything,
        so what is left is the cost of tgtd and of the initiator.
        """
        vol = self.env.volume(1)
        self.targets.append(IoTarget(
            label, manual_lun(self.daemon, vol, '/dev/null', bstype='null'),
            [], 'null'))


def make_targets(env, daemon, untuned, p):
    """Every target of the data path, each with its open/close overhead.

    ``untuned`` is a tgtd started as Debian's tgt.service starts it, without
    etc/systemd/tgt.service.d/fuse-cinder.conf: what the drop-in is worth.
    """
    home = env.home(env.bindfs, 'io')
    plain_home = env.path('plain')
    os.makedirs(plain_home)
    made = Targets(env, daemon, p['lun_mib'] * MiB)
    for write_cache, flags in tgt_options.TGT_SETTINGS:
        made.add_lun('FUSE LUN, ' + tgt_options.setting_label(write_cache,
                                                              flags),
                     (write_cache, flags), env.bindfs, home,
                     **tgt_options.setting_opts(write_cache, flags))
    # The driver's defaults but tgtd's own login keys: what the session
    # parameters are worth (8 KiB data PDUs, an R2T before each burst).
    made.add_lun('FUSE LUN, driver defaults but tgtd\'s login keys (8 KiB '
                 'PDUs)', 'tgtd-keys', env.bindfs, home,
                 **tgt_options.TGTD_SESSION_DEFAULTS)
    made.add_lun('FUSE LUN, driver defaults, tgtd without the unit drop-in '
                 '(16 threads a LUN, glibc malloc defaults)', 'untuned',
                 env.bindfs, home, daemon=untuned)
    made.add_file('FUSE file opened by qemu-img (no iSCSI), O_DIRECT',
                  'file', env.bindfs, home)
    made.add_null_lun('LUN on tgtd\'s null backing store (iSCSI, no file)')
    over_home = env.home(env.overlayfs, 'io')
    made.add_lun('fuse-overlayfs LUN, driver defaults', 'overlay',
                 env.overlayfs, over_home)
    made.add_file('fuse-overlayfs file opened by qemu-img, O_DIRECT',
                  'overlay-file', env.overlayfs, over_home)
    made.add_plain_lun('plain-file LUN (ext4), driver defaults', plain_home)
    made.add_file('plain ext4 file opened by qemu-img, O_DIRECT',
                  'plain-file', None, plain_home)
    for target in made.targets:
        target.overhead = median(
            qemu_bench(target, ['-s', '4K', '-c', '1']) for _ in range(3))
    return made.targets
