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
"""Walk the real driver through a volume life cycle on a real FUSE mount.

By default it mounts bindfs over a scratch directory (and unmounts it when
done); ``--volumes-home`` names a directory on an existing FUSE mount
instead. It is a smoke test an operator can run on a new host: each step
prints what it did, how long it took and how much space it allocated, and
the command fails loudly if data does not survive.
"""

import argparse
from collections.abc import Callable
import hashlib
import os
import sys
import tempfile
import time
from typing import Any
import uuid

from oslo_concurrency import processutils
from oslo_config import cfg

from cinder import context
from cinder import objects
from cinder.volume import configuration
from cinder.volume import driver as cinder_driver

from fuse_cinder.allinone import sandbox
from fuse_cinder import driver

GROUP = 'fuse_demo'
GiB = 1 << 30
MiB = 1 << 20


class _Volume:
    """The few volume fields the driver reads, without a database."""

    def __init__(self, size: int) -> None:
        self.id = str(uuid.uuid4())
        self.name = 'volume-%s' % self.id
        self.size = size
        self.volume_attachment: list[Any] = []
        self.provider_location: str | None = None


class _Snapshot:
    def __init__(self, volume: _Volume) -> None:
        self.id = str(uuid.uuid4())
        self.name = 'snapshot-%s' % self.id
        self.volume = volume
        self.volume_size = volume.size


def _digest(path: str, offset: int, length: int) -> str:
    with open(path, 'rb') as f:
        f.seek(offset)
        return hashlib.sha256(f.read(length)).hexdigest()


def _usage(path: str) -> str:
    st = os.stat(path)
    return '%6.2f GiB apparent, %8.1f MiB allocated' % (
        st.st_size / GiB, st.st_blocks * 512 / MiB)


def run(volumes_home: str) -> int:
    cfg.CONF([], project='cinder', default_config_files=[])
    objects.register_all()
    conf = configuration.Configuration(cinder_driver.volume_opts,
                                       config_group=GROUP)
    conf.append_config_values(driver.FuseISCSIDriver.get_driver_options())
    cfg.CONF.set_override('volumes_home', volumes_home, group=GROUP)
    cfg.CONF.set_override('volume_backend_name', 'fuse-demo', group=GROUP)
    drv = driver.FuseISCSIDriver(configuration=conf,
                                 execute=processutils.execute)
    ctx = context.get_admin_context()

    def step(title: str, func: Callable[..., object], *args: object) -> None:
        start = time.monotonic()
        func(*args)
        print('%-42s %8.1f ms' % (title, (time.monotonic() - start) * 1e3))

    step('check the FUSE mount', drv.do_setup, ctx)
    big = _Volume(1024)
    step('create a 1 TiB volume', drv.create_volume, big)
    print('    %s' % _usage(drv.local_path(big)))

    vol = _Volume(1)
    step('create a 1 GiB volume', drv.create_volume, vol)
    data = os.urandom(8 * MiB)
    with open(drv.local_path(vol), 'r+b') as f:
        f.seek(100 * MiB)
        f.write(data)
    expected = hashlib.sha256(data).hexdigest()
    print('    wrote 8 MiB at offset 100 MiB, sha256 %s...' % expected[:16])

    step('extend it to 2 GiB', drv.extend_volume, vol, 2)
    snap = _Snapshot(vol)
    step('snapshot it', drv.create_snapshot, snap)
    print('    %s' % _usage(drv.local_path(snap)))
    clone = _Volume(2)
    step('clone the volume', drv.create_cloned_volume, clone, vol)
    restored = _Volume(3)
    step('create a 3 GiB volume from the snapshot',
         drv.create_volume_from_snapshot, restored, snap)

    for label, obj in (('snapshot', snap), ('clone', clone),
                       ('volume from snapshot', restored)):
        got = _digest(drv.local_path(obj), 100 * MiB, len(data))
        if got != expected:
            print('DATA MISMATCH in the %s' % label)
            return 1
        usage = _usage(drv.local_path(obj))
        print('    %-22s data intact, %s' % (label, usage))

    stats = drv.get_volume_stats(refresh=True)
    print('stats: %(total_capacity_gb)s GiB total, %(free_capacity_gb)s '
          'GiB free, %(provisioned_capacity_gb)s GiB provisioned, backend '
          '%(backend_state)s' % stats)

    for obj in (big, vol, clone, restored):
        step('delete %s' % obj.name[:15], drv.delete_volume, obj)
    step('delete the snapshot', drv.delete_snapshot, snap)
    left = [n for n in os.listdir(volumes_home)
            if n.startswith(('volume-', 'snapshot-', '.fuse_cinder'))]
    if left:
        print('LEFT BEHIND: %s' % left)
        return 1
    print('demo passed: nothing left in %s' % volumes_home)
    return 0


def main(argv: list[str] | None = None) -> int:
    # No docstring under python -OO: then no description.
    parser = argparse.ArgumentParser(
        description=(__doc__ or '').partition('\n')[0])
    parser.add_argument('--volumes-home',
                        help='a directory on an existing FUSE mount; by '
                             'default bindfs is mounted over a scratch '
                             'directory')
    args = parser.parse_args(argv)
    if args.volumes_home:
        return run(args.volumes_home)
    with tempfile.TemporaryDirectory(prefix='fuse-cinder-demo-') as work:
        with sandbox.ScratchMount(work) as mount:
            return run(mount.volumes_home)


if __name__ == '__main__':
    sys.exit(main())
