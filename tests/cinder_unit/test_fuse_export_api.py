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
"""Volume API, REST controller and RPC client of the fuse_cinder export."""

from http import HTTPStatus
import threading
import time
from unittest import mock

import oslo_messaging as messaging
from oslo_serialization import jsonutils
import webob

from cinder.api.contrib import volume_actions
from cinder import context
from cinder.db.api import volume_update
from cinder import exception
from cinder import objects
from cinder.objects import fields
from cinder.tests.unit.api import fakes
from cinder.tests.unit import fake_constants as fake
from cinder.tests.unit import test
from cinder.tests.unit import utils as tests_utils
from cinder.volume import api as volume_api
from cinder.volume import rpcapi as volume_rpcapi

S = fields.VolumeStatus
HOST = 'host1@fuse#fuse'
CONN = {'driver_volume_type': 'iscsi',
        'data': {'target_portal': '127.0.0.1:3260', 'access_mode': 'rw'}}
CAPS = {'fuse_cinder_export': True, 'fuse_cinder_export_rpc': '1.0'}


def _pools(caps=CAPS, name=HOST):
    return [{'name': 'other@lvm#lvm', 'capabilities': {}},
            {'name': name, 'capabilities': dict(caps)}]


def _count_waiters(shared, arrived):
    """Call arrived() as each caller starts waiting for the request."""
    done = shared._running[0]
    real_wait = done.wait

    def wait(*args):
        arrived()
        return real_wait(*args)

    done.wait = wait


class VolumeExportAPITestCase(test.TestCase):

    def setUp(self):
        super().setUp()
        self.context = context.RequestContext(fake.USER_ID, fake.PROJECT_ID,
                                              is_admin=False,
                                              roles=['member', 'reader'])
        self.admin = context.get_admin_context()
        self.api = volume_api.API()
        self.get_pools = self.mock_object(self.api.scheduler_rpcapi,
                                          'get_pools',
                                          return_value=_pools())
        self.rpc = mock.Mock(spec=volume_rpcapi.VolumeExportAPI)
        self.rpc.export_volume.return_value = CONN
        self.api._volume_export_rpcapi = self.rpc

    def _volume(self, status, **kwargs):
        kwargs.setdefault('volume_type_id', None)
        kwargs.setdefault('host', HOST)
        vol = tests_utils.create_volume(self.context, status=status,
                                        **kwargs)
        return objects.Volume.get_by_id(self.context, vol.id)

    def _status(self, vol):
        return objects.Volume.get_by_id(self.admin, vol.id).status

    # -- export ----------------------------------------------------------

    def test_export(self):
        vol = self._volume(S.AVAILABLE)

        def call(ctxt, volume):
            self.assertEqual(S.EXPORTING, self._status(volume))
            return CONN

        self.rpc.export_volume.side_effect = call
        self.assertEqual(CONN, self.api.export(self.context, vol))
        self.rpc.export_volume.assert_called_once()

    def test_export_refused_for_a_backend_without_the_capability(self):
        # Defect 3: the driver of the backend must say it can export.
        self.get_pools.return_value = _pools(
            {'fuse_cinder_export_rpc': '1.0'})
        vol = self._volume(S.AVAILABLE)
        err = self.assertRaises(exception.InvalidVolume, self.api.export,
                                self.context, vol)
        self.assertIn('does not support exporting', err.msg)
        self.assertEqual(S.AVAILABLE, self._status(vol))
        self.rpc.export_volume.assert_not_called()

    def test_export_refused_where_the_service_is_not_patched(self):
        self.get_pools.return_value = _pools({'fuse_cinder_export': True})
        vol = self._volume(S.AVAILABLE)
        self.assertRaises(exception.ServiceTooOld, self.api.export,
                          self.context, vol)
        self.assertEqual(S.AVAILABLE, self._status(vol))
        self.get_pools.return_value = _pools(
            dict(CAPS, fuse_cinder_export_rpc='2.0'))
        self.assertRaises(exception.ServiceTooOld, self.api.export,
                          self.context, vol)
        self.rpc.export_volume.assert_not_called()

    def test_export_refused_while_no_service_of_the_backend_is_up(self):
        # The scheduler lists the backends of services that are up only.
        self.get_pools.return_value = _pools(name='other@fuse#fuse')
        vol = self._volume(S.AVAILABLE)
        err = self.assertRaises(exception.InvalidVolume, self.api.export,
                                self.context, vol)
        self.assertIn('is up', err.msg)
        self.assertEqual(S.AVAILABLE, self._status(vol))

    def test_a_stale_service_record_does_not_disable_the_feature(self):
        # Defect 3: before, the minimum RPC version over all service
        # records, down ones included, decided for every backend.
        tests_utils.create_service(self.admin, {
            'host': 'old-host@lvm', 'binary': 'cinder-volume',
            'topic': 'cinder-volume', 'rpc_current_version': '3.0',
            'object_current_version': '1.0',
            'updated_at': '2000-01-01 00:00:00'})
        vol = self._volume(S.AVAILABLE)
        self.assertEqual(CONN, self.api.export(self.context, vol))

    def test_export_of_a_read_only_volume_needs_the_capability(self):
        vol = self._volume(S.AVAILABLE, admin_metadata={'readonly': 'True'})
        err = self.assertRaises(exception.InvalidVolume, self.api.export,
                                self.context, vol)
        self.assertIn('read-only', err.msg)
        self.assertEqual(S.AVAILABLE, self._status(vol))
        self.get_pools.return_value = _pools(
            dict(CAPS, fuse_cinder_export_readonly=True))
        self.api.export(self.context, vol)
        self.rpc.export_volume.assert_called_once()

    def test_export_timeout_leaves_a_status_the_owner_can_recover(self):
        # Defect 1.
        vol = self._volume(S.AVAILABLE)
        self.rpc.export_volume.side_effect = messaging.MessagingTimeout
        err = self.assertRaises(volume_api.VolumeExportTimeout,
                                self.api.export, self.context, vol)
        self.assertEqual(504, err.code)
        self.assertIn('error_exporting', err.msg)
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))
        # The owner (not an admin) cleans up.
        vol = objects.Volume.get_by_id(self.context, vol.id)
        self.api.delete_export(self.context, vol)
        self.rpc.delete_volume_export.assert_called_once()
        self.assertEqual(S.DELETE_EXPORTING, self._status(vol))

    def test_export_timeout_after_the_manager_finished(self):
        vol = self._volume(S.AVAILABLE)

        def finished_late(ctxt, volume):
            volume_update(self.admin, volume.id, {'status': S.EXPORTED})
            raise messaging.MessagingTimeout()

        self.rpc.export_volume.side_effect = finished_late
        err = self.assertRaises(volume_api.VolumeExportTimeout,
                                self.api.export, self.context, vol)
        self.assertIn('now exported', err.msg)
        self.assertEqual(S.EXPORTED, self._status(vol))

    def test_export_to_a_service_without_the_endpoint_rolls_back(self):
        vol = self._volume(S.AVAILABLE)
        self.rpc.export_volume.side_effect = messaging.RemoteError(
            'UnsupportedVersion', 'no endpoint')
        self.assertRaises(exception.ServiceTooOld, self.api.export,
                          self.context, vol)
        self.assertEqual(S.AVAILABLE, self._status(vol))

    def test_export_refuses_other_statuses(self):
        for status in (S.IN_USE, S.EXPORTED, S.ERROR, S.EXPORTING,
                       S.DELETE_EXPORTING):
            vol = self._volume(status)
            err = self.assertRaises(exception.InvalidVolume,
                                    self.api.export, self.context, vol)
            self.assertIn('must be available', err.msg)
            self.assertEqual(status, self._status(vol))
        self.rpc.export_volume.assert_not_called()

    def test_export_loses_the_race(self):
        vol = self._volume(S.AVAILABLE)
        volume_update(self.admin, vol.id, {'status': S.IN_USE})
        self.assertRaises(exception.InvalidVolume, self.api.export,
                          self.context, vol)
        self.rpc.export_volume.assert_not_called()

    def test_concurrent_exports_share_one_pools_request(self):
        # A burst of exports asks the scheduler once, not once each.
        vols = [self._volume(S.AVAILABLE) for _i in range(3)]
        shared = self.api._export_pools_request
        waiting = []

        def get_pools(ctxt):
            # Hold the request until the other two exports wait for it.
            _count_waiters(shared, lambda: waiting.append(1))
            for vol in vols[1:]:
                threading.Thread(target=export, args=(vol,)).start()
            deadline = time.monotonic() + 10
            while len(waiting) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            return _pools()

        results = []

        def export(vol):
            results.append(self.api.export(self.context, vol))

        self.get_pools.side_effect = get_pools
        export(vols[0])
        deadline = time.monotonic() + 10
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual([CONN] * 3, results)
        self.assertEqual(2, len(waiting))
        self.get_pools.assert_called_once()
        self.assertEqual([S.EXPORTING] * 3,
                         [v.status for v in vols])
        # Nothing is kept: the next export asks again.
        self.get_pools.side_effect = None
        vol = self._volume(S.AVAILABLE)
        self.api.export(self.context, vol)
        self.assertEqual(2, self.get_pools.call_count)

    def test_callers_waiting_for_a_failed_pools_request_fail_too(self):
        shared = self.api._export_pools_request
        outcome = []

        def get_pools(ctxt):
            waiting = threading.Event()
            _count_waiters(shared, waiting.set)
            waiter.start()
            waiting.wait(10)
            raise messaging.MessagingTimeout('scheduler gone')

        def wait_for_it():
            try:
                shared.get_pools(self.admin)
            except messaging.MessagingTimeout as err:
                outcome.append(err)

        waiter = threading.Thread(target=wait_for_it)
        self.get_pools.side_effect = get_pools
        self.assertRaises(messaging.MessagingTimeout, shared.get_pools,
                          self.admin)
        waiter.join(10)
        self.assertEqual(1, len(outcome))
        self.get_pools.assert_called_once()

    # -- delete-export ---------------------------------------------------

    def test_delete_export_from_every_export_status(self):
        for status in S.EXPORT_STATUSES:
            vol = self._volume(status)
            self.api.delete_export(self.context, vol)
            self.assertEqual(S.DELETE_EXPORTING, self._status(vol))
        self.assertEqual(4, self.rpc.delete_volume_export.call_count)

    def test_delete_export_refuses_other_statuses(self):
        for status in (S.AVAILABLE, S.IN_USE, S.ERROR):
            vol = self._volume(status)
            err = self.assertRaises(exception.InvalidVolume,
                                    self.api.delete_export, self.context,
                                    vol)
            self.assertIn('must be exported or error_exporting', err.msg)
        self.rpc.delete_volume_export.assert_not_called()

    def test_delete_export_timeout(self):
        vol = self._volume(S.EXPORTED)
        self.rpc.delete_volume_export.side_effect = (
            messaging.MessagingTimeout)
        self.assertRaises(volume_api.VolumeExportTimeout,
                          self.api.delete_export, self.context, vol)
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))

    def test_delete_export_to_a_service_without_the_endpoint(self):
        vol = self._volume(S.ERROR_EXPORTING)
        self.rpc.delete_volume_export.side_effect = messaging.RemoteError(
            'NoSuchMethod', 'no method')
        self.assertRaises(exception.ServiceTooOld, self.api.delete_export,
                          self.context, vol)
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))

    # -- the other flows keep off an export (defect 5) -------------------

    def test_connections_refused_on_an_exported_volume(self):
        self.mock_object(self.api, 'volume_rpcapi')
        for status in S.EXPORT_STATUSES:
            vol = self._volume(status)
            err = self.assertRaises(exception.InvalidVolume,
                                    self.api.initialize_connection,
                                    self.context, vol, {'initiator': 'i'})
            self.assertIn('no connection to it can be initialized',
                          err.msg)
            err = self.assertRaises(exception.InvalidVolume,
                                    self.api.terminate_connection,
                                    self.context, vol, {'initiator': 'i'})
            self.assertIn('connections cannot be terminated', err.msg)
            err = self.assertRaises(exception.InvalidVolume,
                                    self.api.attach, self.context, vol,
                                    None, 'host', '/dev/vdb', 'rw')
            self.assertIn('cannot be attached', err.msg)
            err = self.assertRaises(exception.InvalidVolume,
                                    self.api.detach, self.context, vol,
                                    None)
            self.assertIn('cannot be detached', err.msg)
        self.assertEqual([], self.api.volume_rpcapi.mock_calls)

    def test_extend_of_an_exported_volume(self):
        vol = self._volume(S.EXPORTED)
        extend = self.mock_object(self.api.scheduler_rpcapi,
                                  'extend_volume')
        self.api.extend(self.context, vol, 2)
        extend.assert_called_once()
        vol = objects.Volume.get_by_id(self.admin, vol.id)
        self.assertEqual((S.EXTENDING, S.EXPORTED),
                         (vol.status, vol.previous_status))


class VolumeExportControllerTestCase(test.TestCase):

    def setUp(self):
        super().setUp()
        self.context = context.RequestContext(fake.USER_ID, fake.PROJECT_ID,
                                              is_admin=False,
                                              roles=['member', 'reader'])
        self.mock_object(volume_api.API, 'get')

    def _post(self, body):
        req = webob.Request.blank('/v3/%s/volumes/%s/action' %
                                  (fake.PROJECT_ID, fake.VOLUME_ID))
        req.method = 'POST'
        req.body = jsonutils.dump_as_bytes(body)
        req.headers['content-type'] = 'application/json'
        res = req.get_response(fakes.wsgi_app(
            fake_auth_context=self.context))
        return res.status_int, jsonutils.loads(res.body or b'null')

    def test_export_answers_200_with_the_connection_info(self):
        # Defect 10: a synchronous action, like os-initialize_connection.
        with mock.patch.object(volume_api.API, 'export',
                               return_value=CONN):
            code, body = self._post({'os-export': None})
        self.assertEqual(HTTPStatus.OK, code)
        self.assertEqual({'connection_info': CONN}, body)
        self.assertEqual(200, getattr(
            volume_actions.VolumeActionsController._export, 'wsgi_code',
            200))

    def test_delete_export_answers_202(self):
        with mock.patch.object(volume_api.API, 'delete_export',
                               return_value=None):
            code, body = self._post({'os-delete-export': {}})
        self.assertEqual(HTTPStatus.ACCEPTED, code)
        self.assertIsNone(body)

    def test_timeout_answers_504(self):
        for action, method in (('os-export', 'export'),
                               ('os-delete-export', 'delete_export')):
            err = volume_api.VolumeExportTimeout(
                action=action, vol_id=fake.VOLUME_ID,
                status=S.ERROR_EXPORTING)
            with mock.patch.object(volume_api.API, method, side_effect=err):
                code, body = self._post({action: {}})
            self.assertEqual(HTTPStatus.GATEWAY_TIMEOUT, code)
            self.assertIn('os-delete-export', jsonutils.dumps(body))

    def test_refusals_answer_400(self):
        for error in (exception.InvalidVolume(reason='no'),
                      exception.ServiceTooOld('old')):
            with mock.patch.object(volume_api.API, 'export',
                                   side_effect=error):
                code, _body = self._post({'os-export': {}})
            self.assertEqual(HTTPStatus.BAD_REQUEST, code)


class VolumeExportRPCAPITestCase(test.TestCase):

    def setUp(self):
        super().setUp()
        self.rpcapi = volume_rpcapi.VolumeExportAPI()
        self.context = context.get_admin_context()

    def test_target_is_a_namespace_of_its_own(self):
        target = self.rpcapi.client.target
        self.assertEqual('fuse_cinder.volume_export', target.namespace)
        self.assertEqual('1.0', target.version)
        self.assertEqual('1.0', self.rpcapi.client.version_cap)

    def test_calls_address_the_backend(self):
        for host, cluster, topic, server in (
                ('h1@fuse#fuse', None, 'cinder-volume.h1@fuse', 'h1'),
                ('h1@fuse#fuse', 'c1@fuse#fuse', 'cinder-volume.c1@fuse',
                 'c1')):
            vol = tests_utils.create_volume(self.context, host=host,
                                            cluster_name=cluster,
                                            volume_type_id=None)
            with mock.patch.object(self.rpcapi.client, 'prepare') as prep:
                prep.return_value.call.return_value = CONN
                self.assertEqual(CONN, self.rpcapi.export_volume(
                    self.context, vol))
                prep.assert_called_once_with(topic=topic, server=server,
                                             version='1.0')
                prep.return_value.call.assert_called_once_with(
                    self.context, 'export_volume', volume=vol)
                self.rpcapi.delete_volume_export(self.context, vol)
                prep.return_value.call.assert_called_with(
                    self.context, 'delete_volume_export', volume=vol)
                prep.return_value.cast.assert_not_called()

    def test_can_send(self):
        api = volume_rpcapi.VolumeExportAPI
        self.assertTrue(api.can_send('1.0'))
        self.assertTrue(api.can_send('1.3'))
        for served in (None, '', '0.9', '2.0', 'junk'):
            self.assertFalse(api.can_send(served), served)
