// The connection status bar: "live" when every stream is healthy, "reconnecting…" when one is not.

type StreamState = { kind: "connecting" } | { kind: "live" } | { kind: "failed"; error: string };

export type PageState = "connecting" | "live" | "reconnecting";

export class Status {
  private readonly streams = new Map<string, StreamState>();
  private lastError = "";

  constructor(private readonly el: HTMLElement) {
    this.render();
  }

  opening(name: string): void {
    this.set(name, { kind: "connecting" });
  }

  live(name: string): void {
    this.set(name, { kind: "live" });
  }

  failed(name: string, error: string): void {
    this.lastError = error;
    this.set(name, { kind: "failed", error });
  }

  closed(name: string): void {
    this.streams.delete(name);
    this.render();
  }

  get state(): PageState {
    const states = [...this.streams.values()];
    if (states.some((s) => s.kind === "failed")) return "reconnecting";
    // Live as soon as one stream is, as long as none has failed (others may still be opening).
    if (states.some((s) => s.kind === "live")) return "live";
    return "connecting";
  }

  private set(name: string, state: StreamState): void {
    this.streams.set(name, state);
    this.render();
  }

  private render(): void {
    const state = this.state;
    this.el.dataset.state = state;
    const failing = [...this.streams.entries()].filter(([, s]) => s.kind === "failed");
    let text: string;
    if (state === "live") text = `live · ${this.streams.size} feeds`;
    else if (state === "connecting") text = "connecting…";
    else {
      const [name, s] = failing[0] ?? ["", { kind: "failed", error: this.lastError }];
      const error = s.kind === "failed" ? s.error : this.lastError;
      text = `reconnecting… (${name}: ${error})`;
    }
    if (this.el.textContent !== text) this.el.textContent = text;
  }
}
