// Bun's `with { type: "text" }` imports of the embedded uPlot files give their text.
declare module "uplot/dist/uPlot.min.css" {
  const text: string;
  export default text;
}
declare module "uplot/dist/uPlot.iife.min.js" {
  const text: string;
  export default text;
}
