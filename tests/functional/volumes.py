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
"""Cinder volume and snapshot objects for functional tests, without a DB.

Cinder's own test factories live in ``cinder.tests.unit``, whose import
monkey-patches the whole process with eventlet; in this suite threads
must stay real threads, since a test thread blocked on a FUSE call would
otherwise block every test. The objects here are Cinder's real versioned
objects, only never saved.
"""

import io

from cinder import context
from cinder import objects

objects.register_all()
CTX = context.get_admin_context()
VOLUME_TYPE_ID = '00000000-0000-4000-8000-0000000000f5'


def volume(volume_id, size=1, **fields):
    values = dict(id=volume_id, _name_id=None, size=size,
                  status='available', provider_location=None,
                  provider_auth=None, encryption_key_id=None,
                  volume_attachment=objects.VolumeAttachmentList(objects=[]),
                  # What Cinder's upload_volume reads: store and image ids.
                  volume_type=objects.VolumeType(
                      context=CTX, id=VOLUME_TYPE_ID, name='fuse',
                      extra_specs={}),
                  glance_metadata={})
    values.update(fields)
    return objects.Volume(context=CTX, **values)


def snapshot(vol, snapshot_id, **fields):
    values = dict(id=snapshot_id, volume_id=vol.id, volume_size=vol.size,
                  status='available')
    values.update(fields)
    snap = objects.Snapshot(context=CTX, **values)
    snap.volume = vol
    return snap


class ImageStore:
    """An in-memory image service with the calls Cinder's image_utils uses."""

    def __init__(self):
        self.images = {}
        self.data = {}
        self.temp_images = None

    def create(self, ctx, metadata, data=None):
        image = dict(metadata, id=metadata.get('id') or
                     'image-%d' % len(self.images))
        self.images[image['id']] = image
        if data is not None:
            self.data[image['id']] = data.read()
        return dict(image)

    def show(self, ctx, image_id):
        return dict(self.images[image_id])

    def download(self, ctx, image_id, data):
        data.write(self.data[image_id])

    def update(self, ctx, image_id, metadata, data=None, **kwargs):
        self.images[image_id].update(metadata)
        if data is not None:
            self.data[image_id] = data.read()
        return dict(self.images[image_id])

    def add(self, payload, **metadata):
        meta = dict({'disk_format': 'raw', 'container_format': 'bare',
                     'status': 'active', 'size': len(payload)}, **metadata)
        return self.create(CTX, meta, data=io.BytesIO(payload))['id']
