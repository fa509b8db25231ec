// Track downloads for the followed driver: the last hour as GPX, GeoJSON or CSV, fetched from
// Envoy's plain HTTP binding of GeoQueryService.ExportDriverTrack with the page's token, then
// saved under the file name the server gives (content-disposition).
import type { Api } from "./api";

const HOUR_MS = 3_600_000;

export const TRACK_FORMATS = [
  { label: "GPX", format: "EXPORT_FORMAT_GPX", extension: "gpx" },
  { label: "GeoJSON", format: "EXPORT_FORMAT_GEOJSON", extension: "geojson" },
  { label: "CSV", format: "EXPORT_FORMAT_CSV", extension: "csv" },
] as const;

type TrackFormat = (typeof TRACK_FORMATS)[number];

/** GET /v1/drivers/{id}/track:export for the hour before `endMs`. */
export function trackExportUrl(baseUrl: string, driverId: string, format: string, endMs: number): string {
  const url = new URL(`/v1/drivers/${encodeURIComponent(driverId)}/track:export`, baseUrl);
  url.searchParams.set("start_time", new Date(endMs - HOUR_MS).toISOString());
  url.searchParams.set("end_time", new Date(endMs).toISOString());
  url.searchParams.set("format", format);
  return url.toString();
}

/** The file name in a content-disposition header, or null. */
export function attachmentName(header: string | null): string | null {
  const match = header?.match(/filename="([^"]+)"/);
  return match?.[1] ?? null;
}

/**
 * Adds "Last hour: GPX GeoJSON CSV" to the driver panel. The buttons export whichever driver
 * the panel follows when clicked (its data-driver-id), so the panel needs no changes.
 */
export function addTrackDownloads(api: Api, panel: HTMLElement): void {
  const row = document.createElement("p");
  row.className = "exports";
  row.append("Last hour: ");
  const error = document.createElement("span");
  error.className = "error";
  error.hidden = true;
  for (const format of TRACK_FORMATS) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = format.label;
    button.dataset.format = format.format;
    button.addEventListener("click", () => {
      const driverId = panel.dataset.driverId;
      if (!driverId) return;
      button.disabled = true;
      error.hidden = true;
      download(api, driverId, format)
        .catch((err: unknown) => {
          error.textContent = `${format.label} export failed: ${err instanceof Error ? err.message : String(err)}`;
          error.hidden = false;
        })
        .finally(() => {
          button.disabled = false;
        });
    });
    row.append(button, " ");
  }
  row.append(error);
  panel.insertBefore(row, panel.querySelector("button.stop"));
}

async function download(api: Api, driverId: string, format: TrackFormat): Promise<void> {
  const token = api.auth.token;
  const response = await fetch(trackExportUrl(api.baseUrl, driverId, format.format, Date.now()), {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  if (!response.ok) throw new Error(await failure(response));
  const name = attachmentName(response.headers.get("content-disposition")) ?? `${driverId}.${format.extension}`;
  save(await response.blob(), name);
}

/** What went wrong, from the transcoder's JSON status ({code, message}) or the status line. */
async function failure(response: Response): Promise<string> {
  const text = await response.text();
  try {
    const status = JSON.parse(text) as { message?: unknown };
    if (typeof status.message === "string") return `${response.status}: ${status.message}`;
  } catch {
    // not JSON: Envoy's own answers (a missing token) are plain text
  }
  return `${response.status} ${text || response.statusText}`.trim();
}

function save(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  // The browser has taken the blob once the click is handled; give it a moment before freeing it.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
