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
"""The privsep daemon's memory of tgtd (tgt_view), against listed texts."""

from fuse_cinder.privileged import tgt_view
from fuse_cinder.targets import tgtd_mgmt

A = 'iqn.2010-10.org.openstack:volume-aaaaaaaa-0000-4000-8000-000000000000'
B = 'iqn.2010-10.org.openstack:volume-bbbbbbbb-0000-4000-8000-000000000000'


def listing(*targets):
    """tgtd's show text for (tid, name, [accounts])."""
    out = []
    for tid, name, accounts in targets:
        out += ['Target %d: %s' % (tid, name), '    Account information:']
        out += ['        %s' % user for user in accounts]
        out += ['    ACL information:']
    return '\n'.join(out) + '\n'


class Lister(object):
    """Answers show_targets with a text; ``during`` runs while "listing"."""

    def __init__(self, text='', during=None):
        self.text, self.during, self.calls = text, during, 0

    def show_targets(self):
        self.calls += 1
        if self.during:
            self.during()
        return self.text


def view_of(text, pid=100):
    view = tgt_view.TgtdView()
    view.check_pid(pid)
    view.refresh(Lister(text))
    return view


def test_find_lists_only_for_unknown_names():
    view = view_of(listing((1, A, ['ua'])))
    client = Lister(listing((1, A, ['ua']), (2, B, ['ub'])))
    assert view.find(client, A).tid == 1 and client.calls == 0
    assert view.find(client, B).tid == 2 and client.calls == 1
    assert view.find(client, B).accounts == ['ub'] and client.calls == 1


def test_a_new_tgtd_pid_forgets_everything():
    view = view_of(listing((1, A, ['ua'])))
    view.check_pid(100)
    assert view.get(A) is not None
    view.check_pid(101)
    assert view.get(A) is None
    assert view.claim_tid() == 1


def test_a_listing_keeps_what_changed_while_it_ran():
    view = view_of(listing((1, A, ['ua'])))

    def meanwhile():
        view.forget(A)
        view.put(tgtd_mgmt.Target(tid=3, name=B, accounts=['ub']))

    # the text was made before both changes: A still there, B not yet
    view.refresh(Lister(listing((1, A, ['ua'])), during=meanwhile))
    assert view.get(A) is None
    assert view.get(B).tid == 3
    view.refresh(Lister(listing((3, B, ['ub']))))
    assert view.get(B).tid == 3 and view.get(A) is None


def test_a_listing_replaces_the_memory_otherwise():
    view = view_of(listing((1, A, ['ua'])))
    view.refresh(Lister(listing((7, B, ['ub']))))
    assert view.get(A) is None and view.get(B).tid == 7


def test_tids_are_claimed_lowest_first_and_never_twice():
    view = view_of(listing((1, A, []), (3, B, [])))
    assert [view.claim_tid(), view.claim_tid(), view.claim_tid()] == [2, 4, 5]
    view.release_tid(4)
    assert view.claim_tid() == 4
    view.put(tgtd_mgmt.Target(tid=2, name='x'))
    view.release_tid(5)
    assert view.claim_tid() == 5
    view.forget(A)
    assert view.claim_tid() == 1


def test_copies_do_not_change_the_memory():
    view = view_of(listing((1, A, ['ua'])))
    view.get(A).accounts.append('intruder')
    assert view.users_elsewhere('intruder', B) == []


def test_users_elsewhere_names_the_other_targets():
    view = view_of(listing((1, A, ['shared']), (2, B, ['shared', 'ub'])))
    assert view.users_elsewhere('shared', A) == [B]
    assert view.users_elsewhere('ub', B) == []
    assert view.users_elsewhere('nobody', A) == []


def test_one_view_per_control_port():
    assert tgt_view.for_port(61) is tgt_view.for_port(61)
    assert tgt_view.for_port(61) is not tgt_view.for_port(62)


def test_no_descriptor_hint_until_a_listing():
    view = view_of('')
    assert view.free_fds(4) is None
    view.learn_fds({0, 1, 2, 4, 7})
    assert view.free_fds(2) == [3, 5, 8, 9]


def test_a_luns_descriptor_leaves_the_hint_and_comes_back_when_closed():
    view = view_of('')
    view.learn_fds({0, 1, 2})
    view.lun_opened(A, 3)
    view.lun_opened(B, 5)       # past the end: 4 stays believed free
    assert view.free_fds(4) == [4, 6, 7, 8, 9]
    view.lun_closed(A)
    assert view.free_fds(1) == [3, 6]
    view.forget(B)              # a target gone takes its LUN with it
    assert view.free_fds(4) == [3, 4, 5, 6, 7, 8, 9]
    view.lun_closed(A)          # once only
    assert view.free_fds(4) == [3, 4, 5, 6, 7, 8, 9]


def test_a_missed_hint_or_another_tgtd_means_a_new_listing():
    view = view_of('')
    view.learn_fds({0, 1})
    view.forget_fds()
    assert view.free_fds(4) is None
    view.learn_fds({0, 1})
    view.lun_opened(A, 2)
    view.check_pid(101)
    assert view.free_fds(4) is None
    view.learn_fds({0, 1})
    view.lun_closed(A)          # a LUN of the old tgtd frees nothing here
    assert view.free_fds(4) == [2, 3, 4, 5]


def test_the_hint_stays_small():
    view = view_of('')
    view.learn_fds(set(range(0, 1000, 2)))
    assert view.free_fds(1000)[:tgt_view.MAX_HOLES] == list(
        range(1, 2 * tgt_view.MAX_HOLES, 2))
    assert len(view.free_fds(1000)) == tgt_view.MAX_HOLES + 1000
