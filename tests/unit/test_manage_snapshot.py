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
"""Snapshot manage, unmanage and listing against the fake executor.

Cinder's records are what the driver asks ``objects.Snapshot.get_by_id``
(and ``objects.Volume.get_by_id``) for; those two are mocked here, the
files are the fake executor's.
"""

from unittest import mock

import pytest

from cinder import exception
from cinder import objects
from cinder.tests.unit import fake_snapshot

from tests.unit import test_driver as td

CTX, GiB, OTHER_ID, UNSAFE_REFS = td.CTX, td.GiB, td.OTHER_ID, td.UNSAFE_REFS
SNAP_ID, VOL_ID, VOL2_ID = td.SNAP_ID, td.VOL_ID, td.VOL2_ID
path, snapshot, volume = td.path, td.snapshot, td.volume

SNAP2_ID = '99999999-2222-3333-4444-555555555555'
SNAP_GET = 'cinder.objects.Snapshot.get_by_id'


def _gone(*args):
    raise exception.SnapshotNotFound(snapshot_id=args[-1])


def _record(snap_id, vol_id=VOL_ID, deleted=False):
    """Cinder's row of a snapshot, as get_by_id returns it."""
    return fake_snapshot.fake_snapshot_obj(CTX, id=snap_id, volume_id=vol_id,
                                           deleted=deleted)


def _volume_and_snapshot(drv):
    """A 1 GiB volume and its snapshot, created through the driver."""
    vol = volume(size=1)
    drv.create_volume(vol)
    snap = snapshot(vol)
    drv.create_snapshot(snap)
    return vol, snap


def _listing(drv, cinder_snapshots=(), **kw):
    args = dict(marker=None, limit=10, offset=0, sort_keys=['reference'],
                sort_dirs=['asc'])
    args.update(kw)
    return drv.get_manageable_snapshots(list(cinder_snapshots), **args)


# -- manage ----------------------------------------------------------------

def test_manage_snapshot_renames_and_rounds_size_up(drv, fake_fs):
    fake_fs.add('legacy.snap', GiB + 1)
    snap = snapshot(volume(size=1))
    ref = {'source-name': 'legacy.snap'}
    assert drv.manage_existing_snapshot_get_size(snap, ref) == 2
    assert drv.manage_existing_snapshot(snap, ref) is None
    assert fake_fs.names() == [snap.name]
    # Grown to what Cinder records as the snapshot's volume_size, so a
    # volume made from it gets the size Cinder expects.
    assert fake_fs.files[path(snap.name)] == 2 * GiB
    assert drv._provisioned_bytes == 2 * GiB


def test_manage_snapshot_of_whole_gib_keeps_the_file_as_is(drv, fake_fs):
    fake_fs.add('exact.snap', 3 * GiB)
    snap = snapshot(volume(size=1))
    ref = {'source-name': 'exact.snap'}
    assert drv.manage_existing_snapshot_get_size(snap, ref) == 3
    drv.manage_existing_snapshot(snap, ref)
    assert fake_fs.files == {path(snap.name): 3 * GiB}
    assert 'grow' not in fake_fs.programs()


def test_empty_file_counts_as_one_gib(drv, fake_fs):
    fake_fs.add('empty.snap', 0)
    snap = snapshot(volume(size=1))
    ref = {'source-name': 'empty.snap'}
    assert drv.manage_existing_snapshot_get_size(snap, ref) == 1
    drv.manage_existing_snapshot(snap, ref)
    assert fake_fs.files == {path(snap.name): GiB}


def test_manage_snapshot_under_its_own_name_only_grows_it(drv, fake_fs):
    snap = snapshot(volume(size=1))
    fake_fs.add(snap.name, GiB // 2)
    with mock.patch(SNAP_GET) as get:
        drv.manage_existing_snapshot(snap, {'source-name': snap.name})
    get.assert_not_called()
    assert fake_fs.files == {path(snap.name): GiB}
    assert 'rename' not in fake_fs.programs()


@pytest.mark.parametrize('ref', UNSAFE_REFS)
def test_manage_snapshot_refuses_unsafe_references(drv, fake_fs, ref):
    fake_fs.add('link', kind='symlink')
    fake_fs.add('dir', kind='directory')
    snap = snapshot(volume())
    with pytest.raises(exception.ManageExistingInvalidReference):
        drv.manage_existing_snapshot_get_size(snap, ref)
    with pytest.raises(exception.ManageExistingInvalidReference):
        drv.manage_existing_snapshot(snap, ref)
    assert fake_fs.names() == []


@pytest.mark.parametrize('name', [
    'volume-' + VOL_ID,                 # the parent's own file
    'volume-' + OTHER_ID,               # any volume's, even a forgotten one
    '.fuse_cinder_tmp-snapshot-%s-0123abcd' % OTHER_ID,
    '.fuse_cinder_tmp-volume-%s-0123abcd' % OTHER_ID,
    '.fuse_cinder_probe-' + '0' * 32,
])
def test_manage_snapshot_refuses_files_of_volumes_and_the_driver(
        drv, fake_fs, name):
    fake_fs.add(name, GiB)
    snap = snapshot(volume())
    with mock.patch('cinder.objects.Volume.get_by_id',
                    side_effect=exception.VolumeNotFound(volume_id='x')):
        with pytest.raises(exception.ManageExistingInvalidReference):
            drv.manage_existing_snapshot(snap, {'source-name': name})
        with pytest.raises(exception.ManageExistingInvalidReference):
            drv.manage_existing_snapshot_get_size(snap,
                                                  {'source-name': name})
    assert fake_fs.files == {path(name): GiB}
    assert drv._provisioned_bytes == 0


def test_manage_snapshot_refuses_a_snapshot_cinder_knows(drv, fake_fs):
    other = 'snapshot-' + OTHER_ID
    fake_fs.add(other, GiB)
    snap = snapshot(volume())
    with mock.patch(SNAP_GET, return_value=_record(OTHER_ID)) as get:
        with pytest.raises(exception.ManageExistingInvalidReference) as err:
            drv.manage_existing_snapshot(snap, {'source-name': other})
    assert get.call_args[0][1] == OTHER_ID
    assert OTHER_ID in str(err.value)
    assert fake_fs.names() == [other]


def test_manage_snapshot_takes_a_snapshot_file_cinder_forgot(drv, fake_fs):
    other = 'snapshot-' + OTHER_ID
    fake_fs.add(other, GiB)
    snap = snapshot(volume())
    with mock.patch(SNAP_GET, side_effect=_gone):
        drv.manage_existing_snapshot(snap, {'source-name': other})
    assert fake_fs.names() == [snap.name]
    assert drv._provisioned_bytes == GiB


def test_volume_manage_still_refuses_forgotten_snapshot_files(drv, fake_fs):
    """A snapshot- file is presumed a snapshot: manage it as one."""
    other = 'snapshot-' + OTHER_ID
    fake_fs.add(other, GiB)
    with mock.patch(SNAP_GET, side_effect=_gone) as get:
        with pytest.raises(exception.ManageExistingInvalidReference):
            drv.manage_existing(volume(), {'source-name': other})
    get.assert_not_called()
    assert fake_fs.names() == [other]


def test_manage_snapshot_never_overwrites_a_file(drv, fake_fs):
    snap = snapshot(volume())
    fake_fs.add('legacy.snap', GiB)
    fake_fs.add(snap.name, 2 * GiB)     # left over, not the reference
    with pytest.raises(exception.VolumeBackendAPIException):
        drv.manage_existing_snapshot(snap, {'source-name': 'legacy.snap'})
    assert fake_fs.files == {path('legacy.snap'): GiB,
                             path(snap.name): 2 * GiB}


# -- unmanage --------------------------------------------------------------

def test_unmanage_snapshot_keeps_the_file_and_its_name(drv, fake_fs):
    vol, snap = _volume_and_snapshot(drv)
    assert drv._provisioned_bytes == 2 * GiB
    drv.unmanage_snapshot(snap)
    assert fake_fs.names() == sorted([vol.name, snap.name])
    assert 'delete' not in fake_fs.programs()
    assert drv._provisioned_bytes == GiB
    # A second unmanage (the file already taken away) changes nothing.
    fake_fs.files.pop(path(snap.name))
    drv.unmanage_snapshot(snap)
    assert drv._provisioned_bytes == GiB


def test_unmanaged_snapshot_is_listed_then_managed_back(drv, fake_fs):
    """Tempest's flow: unmanage, then manage 'snapshot-<old id>' again."""
    vol, old = _volume_and_snapshot(drv)
    drv.unmanage_snapshot(old)

    with mock.patch(SNAP_GET,
                    return_value=_record(SNAP_ID, deleted=True)) as get:
        listing = _listing(drv)
    [(ctxt, snap_id)] = [c[0] for c in get.call_args_list]
    assert snap_id == SNAP_ID and ctxt.read_deleted == 'yes'
    assert listing == [{
        'reference': {'source-name': old.name}, 'size': 1,
        'safe_to_manage': True, 'reason_not_safe': None,
        'cinder_id': None, 'extra_info': None,
        'source_reference': {'source-name': vol.name}}]

    new = snapshot(vol, snap_id=SNAP2_ID)
    ref = {'source-name': old.name}
    with mock.patch(SNAP_GET, side_effect=_gone):
        assert drv.manage_existing_snapshot_get_size(new, ref) == 1
        drv.manage_existing_snapshot(new, ref)
    assert fake_fs.names() == sorted([vol.name, new.name])
    assert drv._provisioned_bytes == 2 * GiB
    with mock.patch(SNAP_GET) as get:
        listing = _listing(drv, [new])
    get.assert_not_called()
    assert [(e['reference'], e['safe_to_manage'], e['cinder_id'])
            for e in listing] == [({'source-name': new.name}, False,
                                   SNAP2_ID)]


# -- listing ---------------------------------------------------------------

def test_manageable_snapshot_listing(drv, fake_fs):
    vol, mine = _volume_and_snapshot(drv)
    elsewhere = 'snapshot-' + OTHER_ID   # known on another host
    forgotten = 'snapshot-' + SNAP2_ID   # unmanaged, record deleted
    stranger = 'snapshot-' + VOL2_ID     # Cinder never knew it
    fake_fs.add(elsewhere, GiB)
    fake_fs.add(forgotten, 3 * GiB - 1)
    fake_fs.add(stranger, GiB)
    fake_fs.add('legacy.img', GiB)
    fake_fs.add('.fuse_cinder_tmp-snapshot-%s-0123abcd' % OTHER_ID, GiB)
    fake_fs.add('snapshot-not-a-uuid', GiB)
    records = {OTHER_ID: _record(OTHER_ID, vol_id=VOL2_ID),
               SNAP2_ID: _record(SNAP2_ID, deleted=True)}

    def get(ctxt, snap_id):
        return records.get(snap_id) or _gone(ctxt, snap_id)

    with mock.patch(SNAP_GET, side_effect=get):
        listing = _listing(drv, [mine])
    by_name = {e['reference']['source-name']: e for e in listing}
    assert sorted(by_name) == sorted([mine.name, elsewhere, forgotten,
                                      stranger])
    assert {n: (e['safe_to_manage'], e['cinder_id'], e['reason_not_safe'])
            for n, e in by_name.items()} == {
        mine.name: (False, SNAP_ID, 'already managed'),
        elsewhere: (False, OTHER_ID, 'already managed'),
        forgotten: (True, None, None),
        stranger: (True, None, None)}
    assert {n: e['source_reference']['source-name']
            for n, e in by_name.items()} == {
        mine.name: vol.name, elsewhere: 'volume-' + VOL2_ID,
        forgotten: vol.name, stranger: None}
    assert by_name[forgotten]['size'] == 3
    # What the volume service sends over RPC (want_objects) takes them.
    objs = objects.ManageableSnapshotList.from_primitives(CTX, listing)
    assert [o.source_reference for o in objs] == [
        e['source_reference'] for e in listing]


def test_manageable_snapshots_are_paginated_as_cinder_does(drv, fake_fs):
    sizes = {OTHER_ID: 3, SNAP_ID: 1, SNAP2_ID: 2}
    for snap_id, size in sizes.items():
        fake_fs.add('snapshot-' + snap_id, size * GiB)
    with mock.patch(SNAP_GET, side_effect=_gone):
        page = _listing(drv, limit=2, sort_keys=['size'], sort_dirs=['desc'])
        rest = _listing(drv, limit=2, sort_keys=['size'], sort_dirs=['desc'],
                        marker={'source-name': 'snapshot-' + SNAP2_ID})
    assert [e['size'] for e in page] == [3, 2]
    assert [e['size'] for e in rest] == [1]


def test_snapshot_files_stay_out_of_the_volume_listing(drv, fake_fs):
    vol, snap = _volume_and_snapshot(drv)
    drv.unmanage_snapshot(snap)
    listing = drv.get_manageable_volumes([vol], None, 10, 0, ['size'],
                                         ['asc'])
    assert [e['reference']['source-name'] for e in listing] == [vol.name]


def test_nothing_to_list(drv, fake_fs):
    with mock.patch(SNAP_GET) as get:
        assert _listing(drv) == []
    get.assert_not_called()
