"""Webhook delivery task (queue ``webhooks``): a thin wrapper around :func:`docproc.delivery.webhooks.deliver`.

``docproc.webhook.deliver(event_id, attempt)`` makes one attempt; a retry due soon
(within ``webhook_countdown_max_s``) is sent from here as a short Celery countdown,
later ones are enqueued by the periodic ``docproc.periodic.webhooks_due`` tick. The task
is idempotent per attempt (a redelivered message for an attempt already recorded does
nothing), so the broker's at-least-once delivery never sends one attempt twice.
"""

from __future__ import annotations

import logging

from docproc.delivery import webhooks
from workers.celery_app import app
from workers.tasks import resources

logger = logging.getLogger(__name__)


@app.task(name=webhooks.DELIVER_TASK, ignore_result=True)
def deliver_task(event_id: str, attempt: int) -> str:
    """One delivery attempt of a webhook event; returns its outcome."""
    result = webhooks.deliver(resources().lifecycle, event_id, int(attempt))
    if result.countdown is not None:
        try:
            app.send_task(webhooks.DELIVER_TASK, args=[event_id, int(attempt) + 1], queue=webhooks.WEBHOOKS_QUEUE,
                          countdown=result.countdown)
        except Exception:  # noqa: BLE001 - the event stays due in Redis; the periodic tick sends it
            logger.warning("webhook %s: could not enqueue attempt %d; the periodic tick will", event_id,
                           int(attempt) + 1, extra={"event_id": event_id}, exc_info=True)
    return result.outcome
