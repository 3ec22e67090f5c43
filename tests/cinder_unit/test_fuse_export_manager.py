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
"""Volume manager side of the fuse_cinder explicit export (os-export)."""

from unittest import mock

from oslo_messaging.rpc import dispatcher as rpc_dispatcher

from cinder import context
from cinder.db import api as db
from cinder import exception
from cinder import objects
from cinder.objects import fields
from cinder import service
from cinder.tests.unit import fake_constants as fake
from cinder.tests.unit import utils as tests_utils
from cinder.tests.unit import volume as base
from cinder.volume import manager as vol_manager
from cinder.volume import rpcapi as volume_rpcapi

S = fields.VolumeStatus
CONN = {'driver_volume_type': 'iscsi',
        'data': {'target_portal': '127.0.0.1:3260', 'target_lun': 1,
                 'target_iqn': 'iqn.2010-10.org.openstack:volume-1',
                 'auth_method': 'CHAP', 'auth_username': 'u',
                 'auth_password': 'p'}}
CAPABLE = {'volume_backend_name': 'fake', 'fuse_cinder_export': True,
           'fuse_cinder_export_readonly': True}


class VolumeExportManagerTestCase(base.BaseVolumeTestCase):
    # The worker entries are part of what is tested.
    MOCK_WORKER = False

    def setUp(self):
        super().setUp()
        self.driver = self.volume.driver
        self.mock_object(self.driver, 'get_volume_stats',
                         return_value=dict(CAPABLE))
        self.create_export = self.mock_object(
            self.driver, 'create_export',
            return_value={'provider_location': '127.0.0.1:3260,1 iqn 1',
                          'provider_auth': 'CHAP u p'})
        self.initialize = self.mock_object(
            self.driver, 'initialize_connection',
            side_effect=lambda vol, conn: {'driver_volume_type': 'iscsi',
                                           'data': dict(CONN['data'])})
        self.terminate = self.mock_object(self.driver,
                                          'terminate_connection')
        self.remove_export = self.mock_object(self.driver, 'remove_export')
        self.ensure_export = self.mock_object(self.driver, 'ensure_export',
                                              return_value=None)
        self.volume.service_id = 1
        # A process-wide id that is not this service's: the worker
        # entries must carry the manager's own.
        self.mock_object(service.Service, 'service_id', 7)
        self.notifier.reset()

    def _volume(self, status, **kwargs):
        kwargs.setdefault('volume_type_id', None)
        return tests_utils.create_volume(self.context, status=status,
                                         host=self.volume.host, **kwargs)

    def _status(self, vol):
        return objects.Volume.get_by_id(self.context, vol.id).status

    def _events(self):
        return [n['event_type'] for n in self.notifier.notifications]

    def _backend_calls(self):
        return (self.create_export.call_count +
                self.initialize.call_count + self.terminate.call_count +
                self.remove_export.call_count)

    # -- the version space (defect 6) ------------------------------------

    def test_volume_rpc_api_version_is_upstreams(self):
        # The export has an RPC API of its own: the volume RPC API keeps
        # upstream's version, which a later upstream release bumps.
        self.assertEqual('3.20', volume_rpcapi.VolumeAPI.RPC_API_VERSION)
        self.assertEqual('3.20', vol_manager.VolumeManager.RPC_API_VERSION)

    def test_export_endpoint_in_its_own_namespace(self):
        [endpoint] = [e for e in self.volume.additional_endpoints
                      if isinstance(e, vol_manager.VolumeExportEndpoint)]
        self.assertEqual('fuse_cinder.volume_export',
                         endpoint.target.namespace)
        self.assertEqual('1.0', endpoint.target.version)

        disp = rpc_dispatcher.RPCDispatcher(
            [self.volume] + self.volume.additional_endpoints, None,
            access_policy=rpc_dispatcher.DefaultRPCAccessPolicy)
        vol = self._volume(S.EXPORTING)
        incoming = mock.Mock(ctxt={}, client_timeout=None, message={
            'method': 'export_volume', 'namespace':
            'fuse_cinder.volume_export', 'version': '1.0',
            'args': {'volume': vol}})
        with mock.patch.object(self.volume, '_export_volume',
                               return_value=CONN) as export:
            self.assertEqual(CONN, disp.dispatch(incoming))
        export.assert_called_once()
        # Not reachable through the volume RPC API's namespace, at any
        # version, so an upstream method cannot be shadowed or shadow it.
        for version in ('3.20', '3.21', '3.99'):
            incoming.message = {'method': 'export_volume', 'version': version,
                                'args': {'volume': vol}}
            self.assertRaises((rpc_dispatcher.NoSuchMethod,
                               rpc_dispatcher.UnsupportedVersion),
                              disp.dispatch, incoming)
        incoming.message = {'method': '_export_volume', 'version': '3.0',
                            'args': {'volume': vol}}
        self.assertRaises(rpc_dispatcher.NoSuchMethod, disp.dispatch,
                          incoming)

    def test_capabilities_name_the_export_rpc_version(self):
        stats = {'volume_backend_name': 'fake',
                 'pools': [{'pool_name': 'a'}, {'pool_name': 'b'}]}
        self.volume._add_export_capabilities(stats)
        self.assertEqual('1.0', stats['fuse_cinder_export_rpc'])
        for pool in stats['pools']:
            self.assertEqual('1.0', pool['fuse_cinder_export_rpc'])

    def test_report_driver_status_publishes_the_rpc_version(self):
        self.driver.get_volume_stats.return_value = dict(CAPABLE)
        with mock.patch.object(self.volume,
                               'update_service_capabilities') as update:
            self.volume._report_driver_status(self.context)
        stats = update.call_args[0][0]
        self.assertEqual('1.0', stats['fuse_cinder_export_rpc'])
        self.assertTrue(stats['fuse_cinder_export'])

    # -- status check before the backend (defect 2) ---------------------

    def test_late_export_touches_nothing(self):
        # Timeout, reset-state, attach by Nova, then the queued call.
        for status in (S.IN_USE, S.AVAILABLE, S.ERROR_EXPORTING,
                       S.DELETE_EXPORTING):
            vol = self._volume(status)
            self.assertRaises(exception.InvalidVolume,
                              self.volume._export_volume, self.context, vol)
            self.assertEqual(status, self._status(vol))
        self.assertEqual(0, self._backend_calls())
        self.assertEqual([], self._events())

    def test_late_delete_export_touches_nothing(self):
        for status in (S.IN_USE, S.AVAILABLE, S.EXPORTED,
                       S.ERROR_EXPORTING):
            vol = self._volume(status)
            self.assertRaises(exception.InvalidVolume,
                              self.volume._delete_volume_export,
                              self.context, vol)
            self.assertEqual(status, self._status(vol))
        self.assertEqual(0, self._backend_calls())

    def test_export_that_lost_the_volume_keeps_nova_target(self):
        # The status left the export statuses while the driver worked
        # (admin reset-state, then an attachment): its target is Nova's.
        vol = self._volume(S.EXPORTING)

        def reset_and_attach(ctxt, volume, connector):
            db.volume_update(self.context, volume.id, {'status': S.IN_USE})
            return None

        self.create_export.side_effect = reset_and_attach
        self.assertRaises(exception.InvalidVolume,
                          self.volume._export_volume, self.context, vol)
        self.remove_export.assert_not_called()
        self.assertEqual(S.IN_USE, self._status(vol))

    # -- timeouts seen by the API (defect 1) -----------------------------

    def test_export_finishing_after_the_api_gave_up_removes_its_target(self):
        vol = self._volume(S.EXPORTING)

        def api_times_out(volume, connector):
            db.volume_update(self.context, volume.id,
                             {'status': S.ERROR_EXPORTING})
            return dict(CONN)

        self.initialize.side_effect = api_times_out
        self.assertRaises(exception.InvalidVolume,
                          self.volume._export_volume, self.context, vol)
        self.remove_export.assert_called_once()
        # Still the owner's to clean up with os-delete-export.
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))

    # -- export and delete-export ----------------------------------------

    def test_export(self):
        vol = self._volume(S.EXPORTING)
        info = self.volume._export_volume(self.context, vol)
        self.assertEqual(S.EXPORTED, self._status(vol))
        connector = self.create_export.call_args[0][2]
        self.assertIsNone(connector['initiator'])
        self.assertTrue(connector['fuse_cinder_export'])
        self.assertEqual('rw', connector['access_mode'])
        self.assertEqual(connector, self.initialize.call_args[0][1])
        self.assertEqual('CHAP u p',
                         objects.Volume.get_by_id(self.context,
                                                  vol.id).provider_auth)
        # _parse_connection_options ran (defect 4).
        self.assertEqual('rw', info['data']['access_mode'])
        self.assertFalse(info['data']['encrypted'])
        self.assertIn('qos_specs', info['data'])
        self.remove_export.assert_not_called()
        self.assertEqual(['volume.export.start', 'volume.export.end'],
                         self._events())

    def test_export_of_a_read_only_volume(self):
        vol = self._volume(S.EXPORTING, admin_metadata={'readonly': 'True'})
        info = self.volume._export_volume(self.context, vol)
        self.assertEqual('ro', self.create_export.call_args[0][2][
            'access_mode'])
        self.assertEqual('ro', info['data']['access_mode'])

    def test_export_connection_options(self):
        qos = db.qos_specs_create(self.context, {
            'name': 'fe', 'consumer': 'front-end',
            'specs': {'total_iops_sec': '100'}})
        vtype = tests_utils.create_volume_type(self.context, name='t1')
        db.qos_specs_associate(self.context, qos['id'], vtype.id)
        vol = self._volume(S.EXPORTING, volume_type_id=vtype.id,
                           encryption_key_id=fake.ENCRYPTION_KEY_ID)
        self.override_config('report_discard_supported', True,
                             group=self.driver.configuration.config_group)
        self.mock_object(self.driver.configuration, 'safe_get',
                         side_effect=lambda k: k ==
                         'report_discard_supported' or None)
        info = self.volume._export_volume(self.context, vol)
        self.assertEqual({'total_iops_sec': '100'},
                         info['data']['qos_specs'])
        self.assertTrue(info['data']['encrypted'])
        self.assertTrue(info['data']['discard'])

    def test_export_failure_ends_in_error_exporting(self):
        vol = self._volume(S.EXPORTING)
        self.initialize.side_effect = OSError('tgtd died')
        self.assertRaises(exception.VolumeBackendAPIException,
                          self.volume._export_volume, self.context, vol)
        self.remove_export.assert_called_once()
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))
        self.assertEqual(['volume.export.start'], self._events())

    def test_export_without_driver_gives_the_volume_back(self):
        vol = self._volume(S.EXPORTING)
        self.driver._initialized = False
        self.assertRaises(exception.DriverNotInitialized,
                          self.volume._export_volume, self.context, vol)
        self.assertEqual(S.AVAILABLE, self._status(vol))
        self.assertEqual(0, self._backend_calls())

    def test_other_drivers_never_get_the_connector(self):
        # Defect 3: a driver without the capability is not called.
        self.driver.get_volume_stats.return_value = {'volume_backend_name':
                                                     'lvm'}
        vol = self._volume(S.EXPORTING)
        self.assertRaises(exception.InvalidVolume,
                          self.volume._export_volume, self.context, vol)
        self.assertEqual(S.AVAILABLE, self._status(vol))
        vol = self._volume(S.DELETE_EXPORTING)
        self.volume._delete_volume_export(self.context, vol)
        self.assertEqual(S.AVAILABLE, self._status(vol))
        self.assertEqual(0, self._backend_calls())

    def test_capability_of_a_pool(self):
        self.driver.get_volume_stats.return_value = {
            'pools': [{'pool_name': 'a'},
                      {'pool_name': 'b', 'fuse_cinder_export': True}]}
        self.assertTrue(self.volume._driver_can_export())

    def test_delete_export(self):
        vol = self._volume(S.DELETE_EXPORTING)
        self.volume._delete_volume_export(self.context, vol)
        self.assertEqual(S.AVAILABLE, self._status(vol))
        # The connection is closed before the target goes (defect 3).
        self.terminate.assert_called_once()
        self.assertIsNone(self.terminate.call_args[0][1]['initiator'])
        self.remove_export.assert_called_once()
        self.assertEqual(['volume.delete_export.start',
                          'volume.delete_export.end'], self._events())

    def test_delete_export_failure_ends_in_error_exporting(self):
        vol = self._volume(S.DELETE_EXPORTING)
        self.remove_export.side_effect = OSError('busy')
        self.assertRaises(exception.VolumeBackendAPIException,
                          self.volume._delete_volume_export,
                          self.context, vol)
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))

    def test_requests_of_a_volume_take_one_lock(self):
        vol = self._volume(S.EXPORTING)
        with mock.patch('cinder.coordination.COORDINATOR.get_lock') as lock:
            self.volume._export_volume(self.context, vol)
            lock.assert_called_with('%s-fuse-export' % vol.id)
            db.volume_update(self.context, vol.id,
                             {'status': S.DELETE_EXPORTING})
            vol.refresh()
            self.volume._delete_volume_export(self.context, vol)
            lock.assert_called_with('%s-fuse-export' % vol.id)

    def test_worker_entry_while_running_only(self):
        vol = self._volume(S.EXPORTING)
        seen = []

        def create_export(ctxt, volume, connector):
            seen.append(db.worker_get(self.context, resource_type='Volume',
                                      resource_id=volume.id))

        self.create_export.side_effect = create_export
        self.volume._export_volume(self.context, vol)
        self.assertEqual(S.EXPORTING, seen[0].status)
        self.assertEqual(1, seen[0].service_id)
        self.assertRaises(exception.WorkerNotFound, db.worker_get,
                          self.context, resource_type='Volume',
                          resource_id=vol.id)

    # -- start-up (defect 7) ---------------------------------------------

    def test_init_host_recreates_and_saves_new_chap(self):
        vol = self._volume(S.EXPORTED, provider_auth='CHAP old secret')
        self.ensure_export.return_value = {'provider_auth': 'CHAP new s'}
        self.volume._init_host_external_export(self.context, vol)
        self.ensure_export.assert_called_once()
        vol = objects.Volume.get_by_id(self.context, vol.id)
        self.assertEqual('CHAP new s', vol.provider_auth)
        self.assertEqual(S.EXPORTED, vol.status)

    def test_init_host_re_export_failure(self):
        vol = self._volume(S.EXPORTED)
        self.ensure_export.side_effect = OSError('no tgtd')
        self.volume._init_host_external_export(self.context, vol)
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))

    def test_init_host_leaves_requests_of_other_services_alone(self):
        # In a cluster, another service may be running them right now.
        vols = [self._volume(S.EXPORTING), self._volume(S.DELETE_EXPORTING)]
        for vol in vols:
            self.volume._init_host_external_export(self.context, vol)
            db.worker_create(self.context, resource_type='Volume',
                             resource_id=vol.id, status=vol.status,
                             service_id=2)
        self.volume.do_cleanup(self.context, objects.CleanupRequest(
            service_id=1))
        self.assertEqual([S.EXPORTING, S.DELETE_EXPORTING],
                         [self._status(v) for v in vols])
        self.assertEqual(0, self._backend_calls())

    def test_cleanup_rolls_back_this_services_requests(self):
        vols = [self._volume(S.EXPORTING), self._volume(S.DELETE_EXPORTING)]
        for vol in vols:
            db.worker_create(self.context, resource_type='Volume',
                             resource_id=vol.id, status=vol.status,
                             service_id=1)
        self.volume.do_cleanup(self.context, objects.CleanupRequest(
            service_id=1))
        self.assertEqual([S.AVAILABLE, S.AVAILABLE],
                         [self._status(v) for v in vols])
        self.assertEqual(2, self.remove_export.call_count)
        self.assertEqual([], db.worker_get_all(self.context))

    def test_cleanup_skips_a_request_the_api_already_settled(self):
        vol = self._volume(S.ERROR_EXPORTING)
        db.worker_create(self.context, resource_type='Volume',
                         resource_id=vol.id, status=S.EXPORTING,
                         service_id=1)
        self.volume.do_cleanup(self.context, objects.CleanupRequest(
            service_id=1))
        self.assertEqual(S.ERROR_EXPORTING, self._status(vol))
        self.remove_export.assert_not_called()

    # -- detach and extend -----------------------------------------------

    def test_detach_never_tears_down_an_explicit_export(self):
        vol = self._volume(S.EXPORTED)
        self.volume.detach_volume(self.context, vol.id, volume=vol)
        self.remove_export.assert_not_called()
        self.assertEqual(S.EXPORTED, self._status(vol))

    def test_extend_keeps_an_exported_volume_exported(self):
        vol = self._volume(S.EXTENDING, previous_status=S.EXPORTED)
        extend = self.mock_object(self.driver, 'extend_volume')
        with mock.patch.object(vol_manager.QUOTAS, 'commit'):
            self.volume.extend_volume(self.context, vol, 2, [])
        extend.assert_called_once_with(vol, 2)
        vol = objects.Volume.get_by_id(self.context, vol.id)
        self.assertEqual((S.EXPORTED, 2), (vol.status, vol.size))
        self.remove_export.assert_not_called()

    def test_failed_extend_leaves_an_exported_volume_exported(self):
        vol = self._volume(S.EXTENDING, previous_status=S.EXPORTED)
        self.mock_object(self.driver, 'extend_volume',
                         side_effect=OSError('no space'))
        with mock.patch.object(vol_manager.QUOTAS, 'rollback'):
            self.volume.extend_volume(self.context, vol, 2, [])
        self.assertEqual(S.EXPORTED, self._status(vol))

    def test_endpoint_passes_the_calls_on(self):
        endpoint = vol_manager.VolumeExportEndpoint(mock.Mock())
        ctxt = context.get_admin_context()
        endpoint.export_volume(ctxt, mock.sentinel.vol)
        endpoint.manager._export_volume.assert_called_once_with(
            ctxt, mock.sentinel.vol)
        endpoint.delete_volume_export(ctxt, mock.sentinel.vol)
        endpoint.manager._delete_volume_export.assert_called_once_with(
            ctxt, mock.sentinel.vol)
