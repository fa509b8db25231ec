// Webhook subscriptions and how their deliveries go (ListWebhooks, polled every 5 s).
import { Code } from "@connectrpc/connect";
import { describeError, errorCode, poll, reportPoll, type Api, type StreamHandle } from "./api";
import type { Webhook } from "./gen/ridemesh/v1/geo_query_service_pb";

const POLL_MS = 5_000;

export class Webhooks {
  constructor(
    private readonly api: Api,
    private readonly list: HTMLElement,
  ) {}

  start(): StreamHandle {
    return poll(POLL_MS, (signal) => this.refresh(signal));
  }

  private async refresh(signal: AbortSignal): Promise<void> {
    await this.api.auth.ready();
    let webhooks: Webhook[];
    try {
      webhooks = (await this.api.geo.listWebhooks({}, { signal })).webhooks;
      reportPoll(this.api, "ListWebhooks");
    } catch (err) {
      if (signal.aborted) return;
      reportPoll(this.api, "ListWebhooks", err);
      if (errorCode(err) === Code.Unauthenticated) this.api.auth.reject(describeError(err));
      console.warn(`ListWebhooks: ${describeError(err)}`);
      return;
    }
    if (webhooks.length === 0) {
      const none = document.createElement("li");
      none.className = "none";
      none.textContent = "no subscriptions";
      this.list.replaceChildren(none);
      return;
    }
    this.list.replaceChildren(...webhooks.map(row));
  }
}

/** "ok" while nothing waits, "retrying" while a delivery fails, "dead-letters" once any event
 * was given up. */
export function health(webhook: Webhook): string {
  const h = webhook.health;
  if (h && h.deadLettered > 0n) return "dead-letters";
  if (h && (h.lastError || h.backlog > 0n)) return "retrying";
  return "ok";
}

function row(webhook: Webhook): HTMLLIElement {
  const h = webhook.health;
  const li = document.createElement("li");
  li.className = "webhook";
  li.dataset.webhookId = webhook.webhookId;
  li.dataset.health = health(webhook);
  const lagS = h?.lag ? Number(h.lag.seconds) + h.lag.nanos / 1e9 : 0;
  const parts: Array<[string, string]> = [
    ["url", webhook.url],
    ["health", li.dataset.health],
    ["delivered", `${h?.delivered ?? 0n} delivered`],
    ["retried", `${h?.retried ?? 0n} retried`],
    ["dead", `${h?.deadLettered ?? 0n} dead-lettered`],
    ["backlog", `${h?.backlog ?? 0n} waiting, lag ${lagS.toFixed(1)} s`],
  ];
  if (h?.lastError) parts.push(["error", h.lastError]);
  for (const [className, text] of parts) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    li.append(span, " ");
  }
  return li;
}
