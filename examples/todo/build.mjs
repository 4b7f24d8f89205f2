// Bundles the demo into dist/: index.html, app.js and style.css.
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  outfile: "dist/app.js",
  // @vueuse/core (used by the client) reads these at build time
  define: { "process.env.NODE_ENV": '"production"', __VUE_OPTIONS_API__: "false", __VUE_PROD_DEVTOOLS__: "false", __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: "false" },
  logLevel: "warning",
  // served by hypersync itself, next to /sync/push and /sync/pull
  external: ["/sync/live.js"],
});
cpSync("src/index.html", "dist/index.html");
cpSync("src/style.css", "dist/style.css");
console.log("built dist/");
