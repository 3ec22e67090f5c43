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
"""The volume life cycle on a real FUSE mount with real commands."""

import os
import subprocess
import threading
import time
from unittest import mock

from oslo_concurrency import processutils
from oslo_config import cfg
import pytest

from cinder import context
from cinder import exception
from cinder import privsep as cinder_privsep

from fuse_cinder.allinone import sandbox
from fuse_cinder import driver
from fuse_cinder import mount
from tests.functional import volumes

GiB = 1 << 30
MiB = 1 << 20
CTX = context.get_admin_context()
IDS = ['%08d-0000-4000-8000-000000000000' % i for i in range(20)]

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason='needs root for FUSE and tgtd')


def volume(n, size=1):
    return volumes.volume(IDS[n], size=size)


def snapshot(vol, n=9):
    return volumes.snapshot(vol, IDS[n])


def write_at(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_at(path, offset, length):
    with open(path, 'rb') as f:
        f.seek(offset)
        return f.read(length)


def allocated(path):
    return os.stat(path).st_blocks * 512


@pytest.fixture
def fuse(tmp_path):
    with sandbox.ScratchMount(tmp_path) as m:
        yield m


@pytest.fixture
def small_fuse(tmp_path):
    with sandbox.ScratchMount(tmp_path, tmpfs_size='48m') as m:
        yield m


@pytest.fixture(params=['bindfs', 'fuse-overlayfs'])
def hiding(request, tmp_path):
    """A mount that hides holes: bindfs, or fuse-overlayfs (server copy)."""
    cls = (sandbox.ScratchMount if request.param == 'bindfs'
           else sandbox.ScratchOverlayfs)
    with cls(tmp_path) as m:
        yield m


def make(backend_conf, fuse_mount, **opts):
    conf = backend_conf(volumes_home=fuse_mount.volumes_home,
                        fuse_fs_call_timeout=10, **opts)
    drv = driver.FuseISCSIDriver(configuration=conf,
                                 execute=processutils.execute)
    drv.do_setup(CTX)
    drv.check_for_setup_error()
    return drv


def test_life_cycle_keeps_data_and_sparseness(backend_conf, fuse):
    drv = make(backend_conf, fuse)
    vol = volume(0, size=1)
    drv.create_volume(vol)
    path = drv.local_path(vol)
    backing = fuse.backing_path(vol.name)
    assert os.path.getsize(backing) == GiB
    assert allocated(backing) == 0

    data = os.urandom(4 * MiB)
    write_at(path, 512 * MiB, data)
    assert read_at(backing, 512 * MiB, len(data)) == data

    snap = snapshot(vol)
    drv.create_snapshot(snap)
    snap_path = fuse.backing_path(snap.name)
    assert read_at(snap_path, 512 * MiB, len(data)) == data
    assert allocated(snap_path) < 16 * MiB

    drv.extend_volume(vol, 2)
    assert os.path.getsize(backing) == 2 * GiB
    assert read_at(backing, 512 * MiB, len(data)) == data

    clone = volume(1, size=3)
    drv.create_volume_from_snapshot(clone, snap)
    clone_path = fuse.backing_path(clone.name)
    assert os.path.getsize(clone_path) == 3 * GiB
    assert read_at(clone_path, 512 * MiB, len(data)) == data
    assert allocated(clone_path) < 16 * MiB

    clone2 = volume(2, size=2)
    drv.create_cloned_volume(clone2, vol)
    assert read_at(fuse.backing_path(clone2.name), 512 * MiB,
                   len(data)) == data

    write_at(path, 512 * MiB, b'\xff' * len(data))
    vol.size = 1
    drv.revert_to_snapshot(CTX, vol, snap)
    assert read_at(backing, 512 * MiB, len(data)) == data

    stats = drv.get_volume_stats(refresh=True)
    st = os.statvfs(fuse.backing)
    assert stats['backend_state'] == 'up'
    assert stats['total_capacity_gb'] == round(
        st.f_blocks * st.f_frsize / GiB, 2)
    assert stats['provisioned_capacity_gb'] == 1 + 1 + 3 + 2

    for v in (vol, clone, clone2):
        drv.delete_volume(v)
        drv.delete_volume(v)
    drv.delete_snapshot(snap)
    assert os.listdir(os.path.join(fuse.backing, 'volumes')) == []
    assert drv.get_volume_stats(refresh=True)[
        'provisioned_capacity_gb'] == 0


def test_copy_keeps_holes_the_filesystem_hides(fuse):
    """bindfs has no lseek: every byte looks like data through FUSE.

    fuse-cinder-files copy then reads the source and writes only the
    blocks that are not zero (cp would have needed SEEK_DATA for that).
    """
    src, dst = volume(0).name, volume(1).name
    with open(os.path.join(fuse.volumes_home, src), 'wb') as f:
        f.truncate(256 * MiB)
    data = os.urandom(3 * MiB)
    write_at(os.path.join(fuse.volumes_home, src), 100 * MiB + 4096, data)
    out, _err = processutils.execute('fuse-cinder-files', 'copy',
                                     fuse.volumes_home, src, dst, 'thin',
                                     '--verbose')
    assert out.split()[0] == 'stream'
    assert read_at(fuse.backing_path(dst), 0, 256 * MiB) == read_at(
        fuse.backing_path(src), 0, 256 * MiB)
    assert allocated(fuse.backing_path(dst)) < 4 * MiB


def test_thick_volume_copies_are_thick(backend_conf, fuse):
    drv = make(backend_conf, fuse, fuse_sparse_volumes=False)
    vol = volume(0, size=1)
    drv.create_volume(vol)
    data = os.urandom(MiB)
    write_at(drv.local_path(vol), 300 * MiB, data)
    clone = volume(1, size=2)
    drv.create_cloned_volume(clone, vol)
    clone_path = fuse.backing_path(clone.name)
    assert read_at(clone_path, 300 * MiB, len(data)) == data
    assert allocated(clone_path) >= 2 * GiB


def test_full_filesystem_leaves_no_partial_clone(backend_conf, small_fuse):
    drv = make(backend_conf, small_fuse)
    src = volume(0)
    drv.create_volume(src)
    data = os.urandom(MiB)
    for i in range(30):
        write_at(drv.local_path(src), i * MiB, data)

    clone = volume(1)
    with pytest.raises(mount.FuseNoSpace) as err:
        drv.create_cloned_volume(clone, src)
    assert small_fuse.volumes_home in str(err.value)
    assert os.listdir(os.path.join(small_fuse.backing, 'volumes')) == [
        src.name]
    assert read_at(drv.local_path(src), 29 * MiB, MiB) == data

    # The failed copy gave its space back: a small volume still fits.
    drv.create_volume(volume(2))


def test_dead_mount_gives_clear_errors(backend_conf, fuse):
    drv = make(backend_conf, fuse)
    vol = volume(0)
    drv.create_volume(vol)
    fuse.kill()
    with pytest.raises(mount.FuseMountUnavailable) as err:
        drv.create_volume(volume(1))
    assert fuse.volumes_home in str(err.value)
    assert 'ENOTCONN' in str(err.value)
    with pytest.raises(mount.FuseMountUnavailable):
        drv.check_for_setup_error()
    stats = drv.get_volume_stats(refresh=True)
    assert stats['backend_state'] == 'down'
    assert stats['free_capacity_gb'] == 0


def test_manage_refuses_symlink_out_of_volumes_home(backend_conf, fuse,
                                                    tmp_path):
    drv = make(backend_conf, fuse)
    secret = tmp_path / 'outside.img'
    secret.write_bytes(b'x' * 4096)
    os.symlink(str(secret), fuse.backing_path('escape'))
    os.mkdir(fuse.backing_path('subdir'))
    for name in ('escape', 'subdir', '../backing', str(secret)):
        with pytest.raises(exception.ManageExistingInvalidReference):
            drv.manage_existing(volume(0), {'source-name': name})
    assert secret.read_bytes() == b'x' * 4096

    with open(fuse.backing_path('legacy.img'), 'wb') as f:
        f.truncate(GiB + 1)
    vol = volume(1, size=2)
    ref = {'source-name': 'legacy.img'}
    assert drv.manage_existing_get_size(vol, ref) == 2
    drv.manage_existing(vol, ref)
    assert os.path.getsize(fuse.backing_path(vol.name)) == 2 * GiB
    drv.unmanage(vol)
    assert os.path.getsize(fuse.backing_path(vol.name)) == 2 * GiB


@pytest.fixture
def privsep_in_process():
    """Run Cinder's privileged helpers in this (root) process.

    Otherwise the first one spawns 'sudo privsep-helper', which a test
    machine need not have.
    """
    cinder_privsep.sys_admin_pctxt.set_client_mode(False)
    yield
    cinder_privsep.sys_admin_pctxt.set_client_mode(True)


def test_images_are_copied_on_the_local_file(backend_conf, fuse, tmp_path,
                                             privsep_in_process):
    cfg.CONF.set_override('image_conversion_dir', str(tmp_path / 'conv'))
    try:
        drv = make(backend_conf, fuse)
        store = volumes.ImageStore()
        payload = os.urandom(MiB) + b'\0' * (3 * MiB) + os.urandom(MiB)
        image_id = store.add(payload)
        vol = volume(0, size=1)
        drv.create_volume(vol)
        drv.copy_image_to_volume(CTX, vol, store, image_id)
        backing = fuse.backing_path(vol.name)
        assert os.path.getsize(backing) == GiB
        assert read_at(backing, 0, len(payload)) == payload
        assert allocated(backing) < 4 * MiB

        out = store.create(CTX, {'disk_format': 'raw',
                                 'container_format': 'bare'})
        drv.copy_volume_to_image(CTX, vol, store,
                                 {'id': out['id'], 'disk_format': 'raw',
                                  'container_format': 'bare'})
        uploaded = store.data[out['id']]
        assert len(uploaded) == GiB
        assert uploaded[:len(payload)] == payload
    finally:
        cfg.CONF.clear_override('image_conversion_dir')


def same_bytes(a, b):
    """cmp(1): byte for byte, whatever the holes."""
    res = subprocess.run(['cmp', a, b], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def copies(drv, vol, n):
    """Snapshot, volume from it, clone of ``vol``: the new objects."""
    snap = snapshot(vol, n)
    drv.create_snapshot(snap)
    from_snap = volume(n + 1, size=vol.size)
    drv.create_volume_from_snapshot(from_snap, snap)
    clone = volume(n + 2, size=vol.size)
    drv.create_cloned_volume(clone, vol)
    return [snap, from_snap, clone]


def check_every_copy(drv, backing, holes_reported=False):
    """Every copy path, byte-compared (cmp) with its source.

    ``backing(name)`` is the file's path on the backing filesystem. Where
    holes are hidden, written zeros become holes in the copies; where
    they are reported the data extents are copied as they are. Covers
    an empty volume, one written just before it is copied (not yet
    flushed: no shortcut may miss it), one partly written with zeros, and
    one written to while it is snapshotted.
    """
    empty = volume(0, size=1)
    drv.create_volume(empty)
    for obj in copies(drv, empty, 1):
        same_bytes(backing(empty.name), backing(obj.name))
        assert allocated(backing(obj.name)) == 0

    # Written (to the kernel, never fsynced), file still open, copied at
    # once: the source's block count may not show it yet.
    fresh = volume(4, size=1)
    drv.create_volume(fresh)
    with open(drv.local_path(fresh), 'r+b') as f:
        f.seek(700 * MiB + 512)
        f.write(b'just written')
        f.flush()
        for obj in copies(drv, fresh, 5):
            assert read_at(backing(obj.name), 700 * MiB + 512, 12) == (
                b'just written')
    drv.delete_volume(fresh)

    mixed = volume(8, size=1)
    drv.create_volume(mixed)
    path = drv.local_path(mixed)
    write_at(path, 0, os.urandom(MiB + 3))
    write_at(path, 64 * MiB, bytes(32 * MiB))          # written zeros
    write_at(path, 80 * MiB - 1, b'\x01')              # inside them
    write_at(path, 300 * MiB + 4096, os.urandom(9 * MiB))
    write_at(path, GiB - 100, os.urandom(100))         # the last bytes
    made = []
    for obj in copies(drv, mixed, 9):
        same_bytes(backing(mixed.name), backing(obj.name))
        made.append(obj)
    for obj in made:
        if holes_reported:
            assert allocated(backing(obj.name)) <= allocated(
                backing(mixed.name)) + MiB
        else:
            # The written zeros are holes again in every copy.
            assert allocated(backing(obj.name)) < 16 * MiB
    return made


RECORD = 18          # b'RRRRRRRR:VVVVVVVV;': region (MiB) and version


def version_data(region, version):
    """1 MiB of ``region`` at ``version``, recognisable in any 4 KiB."""
    data = (b'%08d:%08d;' % (region // MiB, version)) * (MiB // RECORD)
    return data + bytes(MiB - len(data))


def snapshot_while_written(drv, backing, vol_n, snap_n):
    """Snapshot a volume that a writer keeps rewriting meanwhile.

    Every 4 KiB of the snapshot inside the rewritten regions must be one
    of the versions its region held during the snapshot (no stray zeros,
    no bytes from elsewhere), and all the rest identical to the volume.
    """
    vol = volume(vol_n, size=1)
    drv.create_volume(vol)
    path = drv.local_path(vol)
    regions = [i * 31 * MiB for i in range(32)]
    for r in regions:
        write_at(path, r, version_data(r, 0))
    write_at(path, GiB - MiB, os.urandom(MiB))          # never rewritten
    stop = threading.Event()
    last = [0]

    def writer():
        with open(path, 'r+b') as f:
            while not stop.is_set():
                last[0] += 1
                for r in regions:
                    f.seek(r)
                    f.write(version_data(r, last[0]))
                f.flush()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        snap = snapshot(vol, snap_n)
        drv.create_snapshot(snap)
    finally:
        stop.set()
        thread.join()
    assert last[0] > 1
    snap_path = backing(snap.name)
    assert os.path.getsize(snap_path) == GiB
    for r in regions:
        got = read_at(snap_path, r, MiB)
        for page in range(0, MiB, 4096):
            piece = got[page:page + 4096]
            first = -page % RECORD
            tag = piece[first:first + RECORD]
            assert int(tag[:8]) == r // MiB, (r, page, tag)
            version = int(tag[9:17])
            assert 0 <= version <= last[0]
            assert piece == version_data(r, version)[page:page + 4096]
    for offset in range(0, GiB, MiB):
        if offset not in regions:
            assert read_at(snap_path, offset, MiB) == read_at(
                backing(vol.name), offset, MiB), offset
    return snap


def test_every_copy_is_exact_where_holes_are_hidden(backend_conf, hiding):
    drv = make(backend_conf, hiding)
    check_every_copy(drv, hiding.backing_path)
    snapshot_while_written(drv, hiding.backing_path, 12, 13)


def test_empty_volume_copies_take_no_time(backend_conf, hiding):
    """The block count is proven on the mount: no 1 TiB read.

    Reading 1 TiB through FUSE takes about half an hour; the copy
    timeout here would end it after a minute.
    """
    drv = make(backend_conf, hiding, fuse_copy_timeout=60)
    vol = volume(0, size=1024)
    drv.create_volume(vol)
    start = time.monotonic()
    made = copies(drv, vol, 1)
    assert time.monotonic() - start < 30
    for obj in made:
        st = os.stat(hiding.backing_path(obj.name))
        assert (st.st_size, st.st_blocks) == (1024 * GiB, 0)
    out, _err = processutils.execute(
        'fuse-cinder-files', 'copy', hiding.volumes_home, vol.name,
        volume(5).name, 'thin', '--verbose')
    assert out.split()[:2] == ['empty', 'blocks_trusted=True']


def test_thick_copies_are_exact(backend_conf, hiding):
    drv = make(backend_conf, hiding, fuse_sparse_volumes=False)
    vol = volume(0, size=1)
    drv.create_volume(vol)
    write_at(drv.local_path(vol), 5 * MiB, os.urandom(3 * MiB))
    write_at(drv.local_path(vol), 600 * MiB, bytes(MiB))
    for obj in copies(drv, vol, 1):
        same_bytes(hiding.backing_path(vol.name),
                   hiding.backing_path(obj.name))
        assert allocated(hiding.backing_path(obj.name)) >= GiB


def test_migration_renames_on_one_mount_and_copies_between_two(
        backend_conf, tmp_path):
    """migrate_volume with the real root helper on real bindfs mounts.

    From one volumes_home to a second one on the same mount (a rename),
    then to a volumes_home on another mount (the sparse copy); the
    destination's own statistics give the capabilities. The target
    helper is left out (no tgtd here; the multi-process test runs it).
    """
    with sandbox.ScratchMount(tmp_path / 'one') as one, \
            sandbox.ScratchMount(tmp_path / 'two') as two:
        beside = os.path.join(one.mountpoint, 'volumes2')
        os.makedirs(beside)
        src = make(backend_conf, one)
        src.host = 'node@src'
        drivers = {}
        for name, home in (('beside', beside), ('two', two.volumes_home)):
            conf = backend_conf(volumes_home=home, fuse_fs_call_timeout=10)
            drivers[name] = driver.FuseISCSIDriver(
                configuration=conf, execute=processutils.execute,
                host='node@' + name)
            drivers[name].do_setup(CTX)
        vol = volume(0, size=1)
        src.create_volume(vol)
        data = os.urandom(2 * MiB)
        write_at(src.local_path(vol), 300 * MiB, data)

        def move(frm, to):
            host = {'host': to.host + '#x',
                    'capabilities': to.get_volume_stats(refresh=True)}
            with mock.patch.object(frm.target_driver,
                                   'remove_export') as remove:
                assert frm.migrate_volume(CTX, vol, host) == (True, None)
            remove.assert_called_once_with(CTX, vol)
            path = to.local_path(vol)
            assert not os.path.exists(frm.local_path(vol))
            assert os.path.getsize(path) == GiB
            assert read_at(path, 300 * MiB, len(data)) == data
            assert allocated(path) < 16 * MiB

        def inode(*parts):
            return os.stat(os.path.join(*parts, vol.name)).st_ino

        first = inode(one.backing, 'volumes')
        move(src, drivers['beside'])
        assert inode(one.backing, 'volumes2') == first        # renamed
        move(drivers['beside'], drivers['two'])               # copied
        for home in (one.volumes_home, beside, two.volumes_home):
            leftovers = [n for n in os.listdir(home) if n != vol.name]
            assert leftovers == []
        assert sorted(os.listdir(two.volumes_home)) == [vol.name]
