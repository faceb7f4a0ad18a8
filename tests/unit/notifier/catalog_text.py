"""A catalog with notification settings, shared by the notifier's tests."""

CATALOG = """
version: 1
tenants:
  default:
    slack: {channel: C0000000000}
    notifications:
      channels: [slack, email, webhook]
      slack: {channel: C0APPROVALS, direct: true}
      webhooks: ["http://127.0.0.1:9/hook"]
      people:
        alice: {email: alice@example.com, slack: U0ALICE}
        bob: {email: bob@example.com}
        carol: {email: carol@example.com}
        dave: {email: dave@example.com}
        erin: {slack: U0ERIN}
      approvers: {admin: [alice, bob], operator: [carol]}
      groups: {leads: [dave]}
      escalate_to: leads
      remind_after: 4h
      escalate_after: 8h
      actions:
        notify.webhook: {remind_after: 30m, channels: [email]}
  quiet:
    notifications:
      quiet_hours: {start: "22:00", end: "07:00", timezone: Europe/Berlin}
actions:
  notify.webhook:
    description: Post a signed webhook.
    approval: {roles: [admin], approvals_required: 1}
    pending_ttl: 2h
    plan:
      - stepId: post
        connector: webhook
        operation: post
        params: {body: "{{ payload }}"}
  environment.create:
    description: Create an environment.
    approval:
      stages:
        - {name: review, roles: [operator], approvals_required: 1}
        - {name: sign-off, roles: [admin], approvals_required: 2}
    plan:
      - {stepId: create-branch, connector: github, operation: create_branch, params: {}}
      - {stepId: announce, connector: slack, operation: post_message, params: {}}
"""
