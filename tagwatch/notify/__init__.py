"""Notifications: who gets what (policy), escalation, channels, the outbox dispatcher,
inbound Twilio webhooks and operator acknowledgement. See each module's docstring."""
