#!/usr/bin/env python3
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
"""How long cinder-volume's start-up re-export takes with TgtFileTarget.

Run by hand as root from the checkout (it starts its own tgtd on a free
test port, see tests/functional/tgtd.py, and a bindfs mount, and removes
both):

    PYTHONPATH=. python tools/bench_ensure_export.py [--volumes 200]

It prints the time of ensure_export for 1 and for N in-use volumes, both
when tgtd still has the targets (the usual restart of cinder-volume) and
after tgtd lost them (tgtd or host restart), and for comparison what a
``tgt-admin --update`` per volume costs, which is what re-exporting
without the fast path would do.
"""

import argparse
import os
import sys
import tempfile
import time

from oslo_config import cfg

from cinder import context
from cinder import exception
from cinder import objects
from cinder.tests.unit import fake_volume
from cinder import utils
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver

from fuse_cinder import options
from fuse_cinder.target import tgt
from tests.functional import fusemount
from tests.functional import tgtd

CTX = context.get_admin_context()
GROUP = 'bench_tgt'


class NoDB:
    def volume_get(self, ctxt, volume_id):
        raise exception.VolumeNotFound(volume_id=volume_id)


def make_target(targets_dir, daemon):
    conf = configuration.Configuration(cinder_driver.volume_opts,
                                       config_group=GROUP)
    conf.append_config_values(options.tgt_opts)
    for name, value in (('volumes_dir', targets_dir),
                        ('fuse_tgt_control_port', daemon.control_port),
                        ('target_ip_address', '127.0.0.1'),
                        ('target_port', daemon.portal_port)):
        cfg.CONF.set_override(name, value, group=GROUP)
    return tgt.TgtFileTarget(configuration=conf, db=NoDB(),
                             executor=utils.execute)


def timed(label, count, func):
    start = time.monotonic()
    func()
    elapsed = time.monotonic() - start
    print('%-52s %8.3f s  (%.1f ms/volume)'
          % (label, elapsed, 1000 * elapsed / count))
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--volumes', type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: it starts tgtd and a FUSE mount')
    objects.register_all()
    n = args.volumes

    with tempfile.TemporaryDirectory() as base, \
            fusemount.BindfsMount(os.path.join(base, 'fuse')) as fuse, \
            tgtd.Tgtd() as daemon:
        os.makedirs(fuse.volumes_home, exist_ok=True)
        targets_dir = os.path.join(base, 'targets')
        vols = []
        for i in range(n):
            vol = fake_volume.fake_volume_obj(
                CTX, id='%08d-0000-4000-8000-000000000000' % i,
                provider_auth=None, provider_location=None, status='in-use')
            with open(os.path.join(fuse.volumes_home, vol.name), 'wb') as f:
                f.truncate(1 << 30)
            vols.append(vol)

        def path(vol):
            return os.path.join(fuse.volumes_home, vol.name)

        target = make_target(targets_dir, daemon)

        def export_all():
            for vol in vols:
                data = target.create_export(CTX, vol, path(vol))
                vol.provider_location = data['location']
                vol.provider_auth = data['auth']
                target.initialize_connection(
                    vol, {'initiator': 'iqn.1994-05.com.redhat:bench'})

        print('%d volumes of 1 GiB (sparse) on bindfs, tgtd on port %d'
              % (n, daemon.control_port))
        timed('create_export + initialize_connection, each', n, export_all)

        def ensure(some):
            # a new TgtFileTarget: a freshly started cinder-volume
            fresh = make_target(targets_dir, daemon)
            for vol in some:
                fresh.ensure_export(CTX, vol, path(vol))

        timed('ensure_export, 1 volume, target present', 1,
              lambda: ensure(vols[:1]))
        timed('ensure_export, %d volumes, targets present' % n, n,
              lambda: ensure(vols))

        daemon.restart()
        timed('ensure_export, 1 volume, after tgtd restart', 1,
              lambda: ensure(vols[:1]))
        timed('ensure_export, %d more, after tgtd restart' % (n - 1),
              max(n - 1, 1), lambda: ensure(vols[1:]))

        def update_each():
            for vol in vols:
                utils.execute('tgt-admin', '-C', str(daemon.control_port),
                              '--conf',
                              target._conf_path(target._iqn(vol)),
                              '--update', target._iqn(vol),
                              run_as_root=True)
        timed('for comparison: tgt-admin --update per volume', n,
              update_each)

        timed('remove_export, each', n,
              lambda: [target.remove_export(CTX, v) for v in vols])
        assert tgt.parse_show_target(daemon.show()) == {}


if __name__ == '__main__':
    main()
