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
"""The driver on a FUSE mount that hangs, fills up or supports SEEK_DATA."""

import collections
import concurrent.futures
import os
import time

from oslo_concurrency import processutils
from oslo_config import cfg
import pytest

from fuse_cinder import driver
from fuse_cinder import mount
from tests.functional import test_driver_fuse as life
from tests.functional import volumes

MiB = 1 << 20
GiB = 1 << 30
CALL_TIMEOUT = 2

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='needs root for FUSE')


@pytest.fixture
def faulty(fs, backend_conf):
    os.mkdir(os.path.join(fs.backing, 'volumes'))
    conf = backend_conf(volumes_home=os.path.join(fs.mountpoint, 'volumes'),
                        fuse_fs_call_timeout=CALL_TIMEOUT)
    drv = driver.FuseISCSIDriver(configuration=conf,
                                 execute=processutils.execute)
    drv.do_setup(None)
    return fs, drv


def backing(fs, name):
    return os.path.join(fs.backing, 'volumes', name)


def test_hung_daemon_gives_an_error_not_a_hang(faulty):
    fs, drv = faulty
    fs.hang()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    start = time.monotonic()
    try:
        future = pool.submit(drv.create_volume, life.volume(0))
        # Bounded by the call timeout plus the reaping grace; 60 s means
        # the driver waited on the daemon instead.
        with pytest.raises(mount.FuseMountUnavailable) as err:
            future.result(timeout=60)
        assert 'hung' in str(err.value) or 'stuck' in str(err.value)
        assert drv.mount.volumes_home in str(err.value)
        assert time.monotonic() - start >= CALL_TIMEOUT
        stats = pool.submit(drv.get_volume_stats, True).result(timeout=60)
        assert stats['backend_state'] == 'down'
    finally:
        fs.release()
        pool.shutdown(wait=True)
    # Once the daemon answers again the backend works and reports up.
    fs.clear()
    drv.create_volume(life.volume(1))
    assert drv.get_volume_stats(refresh=True)['backend_state'] == 'up'


def test_image_upload_from_a_hung_daemon_gives_an_error(faulty, tmp_path):
    """The upload reads through a child: cinder-volume never blocks."""
    fs, drv = faulty
    vol = life.volume(0)
    drv.create_volume(vol)
    drv.mount.copy_timeout = CALL_TIMEOUT
    cfg.CONF.set_override('image_conversion_dir', str(tmp_path / 'conv'))
    store = volumes.ImageStore()
    image = store.create(None, {'disk_format': 'raw',
                                'container_format': 'bare'})
    fs.hang()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        future = pool.submit(drv.copy_volume_to_image, None, vol, store,
                             dict(image))
        with pytest.raises(mount.FuseMountUnavailable) as err:
            future.result(timeout=60)
        assert drv.mount.volumes_home in str(err.value)
        assert store.data == {}
    finally:
        fs.release()
        pool.shutdown(wait=True)
        cfg.CONF.clear_override('image_conversion_dir')
    assert os.listdir(tmp_path / 'conv') == []


def test_enospc_mid_clone_leaves_no_partial_file(faulty):
    fs, drv = faulty
    src = life.volume(0)
    drv.create_volume(src)
    data = os.urandom(8 * MiB)
    life.write_at(drv.local_path(src), 0, data)
    fs.enospc(after_bytes=2 * MiB)
    with pytest.raises(mount.FuseNoSpace):
        drv.create_cloned_volume(life.volume(1), src)
    with pytest.raises(mount.FuseNoSpace):
        drv.create_snapshot(life.snapshot(src))
    assert os.listdir(os.path.join(fs.backing, 'volumes')) == [src.name]
    fs.clear()
    assert life.read_at(backing(fs, src.name), 0, len(data)) == data
    assert drv.get_volume_stats(refresh=True)['provisioned_capacity_gb'] == 1


def test_copies_skip_holes_where_fuse_reports_them(faulty):
    """With lseek and copy_file_range in FUSE no byte crosses the daemon.

    fuse-cinder-files finds the data with SEEK_DATA and hands each extent
    to copy_file_range, which faultfs performs on its backing files.
    """
    fs, drv = faulty
    src = life.volume(0, size=10)
    drv.create_volume(src)
    data = os.urandom(4 * MiB)
    life.write_at(drv.local_path(src), 5 * GiB, data)
    before = fs.stats()
    snap = life.snapshot(src)
    drv.create_snapshot(snap)
    after = fs.stats()
    calls = collections.Counter(after['calls'])
    calls.subtract(before['calls'])
    # No read or write request; the bytes faultfs counts are those its
    # copy_file_range moved on the backing files.
    assert calls['read'] == calls['write'] == 0
    assert calls['copy_file_range'] >= 1
    assert after['bytes_written'] - before['bytes_written'] == len(data)
    assert life.read_at(backing(fs, snap.name), 5 * GiB, len(data)) == data
    assert life.allocated(backing(fs, snap.name)) < 16 * MiB


def test_every_copy_is_exact_where_holes_are_reported(faulty):
    fs, drv = faulty
    made = life.check_every_copy(drv, lambda name: backing(fs, name),
                                 holes_reported=True)
    assert made
    life.snapshot_while_written(drv, lambda name: backing(fs, name), 12, 13)
    vol = life.volume(14, size=1024)
    drv.create_volume(vol)
    start = time.monotonic()
    for obj in life.copies(drv, vol, 15):
        st = os.stat(backing(fs, obj.name))
        assert (st.st_size, st.st_blocks) == (1024 * GiB, 0)
    assert time.monotonic() - start < 30
