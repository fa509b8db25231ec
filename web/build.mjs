// Bundles the live map into dist/: app.js (+ map), app.css (ours + Leaflet's), index.html.
// Deterministic: the same sources give the same bytes.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  absWorkingDir: root,
  entryPoints: ["src/main.ts"],
  outfile: "dist/app.js", // the imported CSS lands next to it as dist/app.css
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2022"],
  minify: true,
  sourcemap: "linked",
  legalComments: "linked",
  loader: { ".png": "dataurl", ".svg": "dataurl" },
  logLevel: "warning",
});
await copyFile(join(root, "index.html"), join(dist, "index.html"));
console.log("built web/dist");
