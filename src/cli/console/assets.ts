/**
 * uPlot, embedded in the binary as text (Bun's text import), so the console works on a
 * monitoring VLAN with no way out: no CDN, nothing fetched at run time.
 */
import uplotCss from "uplot/dist/uPlot.min.css" with { type: "text" };
import uplotJs from "uplot/dist/uPlot.iife.min.js" with { type: "text" };

export interface Asset {
  readonly body: string;
  readonly contentType: string;
}

export const ASSETS: ReadonlyMap<string, Asset> = new Map([
  ["/assets/uPlot.iife.min.js", { body: uplotJs, contentType: "text/javascript; charset=utf-8" }],
  ["/assets/uPlot.min.css", { body: uplotCss, contentType: "text/css; charset=utf-8" }],
]);
