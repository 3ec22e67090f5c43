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
"""The shipped patches against a copy of the pip-installed Cinder."""

import filecmp
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from fuse_cinder import patches
from tests.functional import patched_cinder

TOUCHED = sorted({name for f in patches.series()
                  for name in patches.touched_files(f)})


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    return patched_cinder.copy_installed_cinder(
        tmp_path_factory.mktemp('pristine'))


@pytest.fixture
def site(pristine, tmp_path):
    dest = tmp_path / 'site'
    shutil.copytree(pristine, dest)
    return str(dest)


def _same_as_pristine(site, pristine):
    for rel in TOUCHED:
        if not filecmp.cmp(os.path.join(site, rel),
                           os.path.join(pristine, rel), shallow=False):
            return False
    return True


TOOLS = ['patch'] + (['git'] if shutil.which('git') else [])


@pytest.mark.parametrize('tool', TOOLS)
def test_patches_apply_and_revert_cleanly(site, pristine, tool):
    run = patched_cinder.run_patch_command
    res = run(site, '--tool', tool, 'check')
    assert res.returncode == 0, res.stdout
    assert 'patches: not applied' in res.stdout
    assert 'Cinder %s in %s' % (patches.CINDER_VERSION, site) in res.stdout

    res = run(site, '--tool', tool, 'apply')
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(' applied') >= len(patches.series())
    assert not _same_as_pristine(site, pristine)

    res = run(site, '--tool', tool, 'check')
    assert res.returncode == 0
    assert 'patches: applied' in res.stdout

    res = run(site, '--tool', tool, 'apply')      # idempotent
    assert res.returncode == 0
    assert res.stdout.count('already applied') == len(patches.series())

    res = run(site, '--tool', tool, 'revert')
    assert res.returncode == 0, res.stdout + res.stderr
    assert _same_as_pristine(site, pristine)
    leftovers = [n for _d, _s, names in os.walk(site) for n in names
                 if n.endswith(('.orig', '.rej'))]
    assert leftovers == []


def test_mismatched_cinder_is_refused(site, pristine):
    for name in os.listdir(site):
        if name.startswith('cinder-') and name.endswith('.dist-info'):
            meta = os.path.join(site, name, 'METADATA')
            with open(meta) as f:
                text = f.read()
            with open(meta, 'w') as f:
                f.write(text.replace('Version: %s' % patches.CINDER_VERSION,
                                     'Version: 30.0.0'))
    res = patched_cinder.run_patch_command(site, 'apply')
    assert res.returncode == 2
    assert 'Refusing' in res.stdout and '30.0.0' in res.stdout
    assert _same_as_pristine(site, pristine)


# Runs with the patched copy first on sys.path; prints OK at the end.
IMPORT_CHECK = textwrap.dedent('''
    import cinder, os, sys
    assert cinder.__file__.startswith(sys.argv[1]), cinder.__file__
    from cinder import objects
    objects.register_all()
    from cinder.volume import manager  # first: Cinder's import order
    from cinder.api.contrib import volume_actions as actions
    from cinder.api.schemas import volume_actions as schemas
    from cinder.objects import fields
    from cinder import policies
    from cinder.policies import volume_actions as va_policy
    from cinder.volume import api as volume_api
    from cinder.volume import rpcapi

    # The volume RPC API keeps upstream's version; the export has a
    # namespace and versions of its own.
    assert rpcapi.VolumeAPI.RPC_API_VERSION == '3.20'
    assert manager.VolumeManager.RPC_API_VERSION == '3.20'
    assert rpcapi.VolumeExportAPI.NAMESPACE == 'fuse_cinder.volume_export'
    assert rpcapi.VolumeExportAPI.RPC_API_VERSION == '1.0'
    for name in ('export_volume', 'delete_volume_export'):
        assert callable(getattr(rpcapi.VolumeExportAPI, name))
        assert callable(getattr(manager.VolumeExportEndpoint, name))
        assert not hasattr(manager.VolumeManager, name)
    for status in ('exporting', 'exported', 'delete_exporting',
                   'error_exporting'):
        assert status in fields.VolumeStatus.ALL, status
    assert manager.MAPPING['cinder.volume.drivers.fuse.FuseISCSIDriver'] \\
        == 'fuse_cinder.driver.FuseISCSIDriver'
    ctrl = actions.VolumeActionsController
    assert ctrl._export.wsgi_action == 'os-export'
    assert ctrl._delete_export.wsgi_action == 'os-delete-export'
    # os-export is synchronous and has a body: 200, like
    # os-initialize_connection; os-delete-export 202, like
    # os-terminate_connection.
    assert getattr(ctrl._export, 'wsgi_code', 200) == 200
    assert ctrl._delete_export.wsgi_code == 202
    assert schemas.export['required'] == ['os-export']
    assert callable(volume_api.API.export)
    assert callable(volume_api.API.delete_export)
    rules = {r.name: r for r in policies.list_rules()}
    for name in (va_policy.EXPORT_POLICY, va_policy.DELETE_EXPORT_POLICY):
        rule = rules[name]
        assert rule.description and rule.operations, name
        assert 'role:admin' in rule.check_str or 'rule:' in rule.check_str
    print('OK')
''')


def test_patched_modules_import(tmp_path_factory):
    site = patched_cinder.patched_copy(tmp_path_factory.mktemp('patched'))
    res = subprocess.run(
        [sys.executable, '-c', IMPORT_CHECK, site],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=patched_cinder.pythonpath(site)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith('OK')


CINDER_UNIT_DIR = os.path.join(patched_cinder.REPO, 'tests', 'cinder_unit')
# Cinder's own unit-test base needs these (test-requirements.txt).
CINDER_TEST_DEPS = 'import testtools, oslotest'


def test_cinder_style_unit_tests(tmp_path_factory):
    """Cinder unit tests of the patched code, in Cinder's own test tree.

    tests/cinder_unit/test_*.py go into cinder/tests/unit/volume/ of a
    patched copy (with Cinder's tests) and run there with unittest, on
    Cinder's test base: a real SQLite database, fake notifier, fake RPC.
    """
    site = patched_cinder.patched_copy(tmp_path_factory.mktemp('unit'))
    env = dict(os.environ, PYTHONPATH=patched_cinder.pythonpath(site))
    deps = subprocess.run([sys.executable, '-c', CINDER_TEST_DEPS],
                          capture_output=True, text=True, env=env)
    if deps.returncode != 0:
        if os.environ.get('CI'):
            pytest.fail('Cinder test dependencies missing: ' + deps.stderr)
        pytest.skip('Cinder test dependencies (testtools, oslotest) are '
                    'not installed; tox installs them')
    dest = os.path.join(site, 'cinder', 'tests', 'unit', 'volume')
    modules = []
    for name in sorted(os.listdir(CINDER_UNIT_DIR)):
        if name.startswith('test_') and name.endswith('.py'):
            shutil.copy(os.path.join(CINDER_UNIT_DIR, name), dest)
            modules.append('cinder.tests.unit.volume.' + name[:-3])
    assert modules
    res = subprocess.run(
        [sys.executable, '-W', 'ignore', '-m', 'unittest'] + modules,
        capture_output=True, text=True, timeout=900, cwd=site, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-12000:]
    assert '\nOK' in res.stderr
