// Run with `npm run dev` (the app's devUrl) or `npm run build` (ui/dist).
import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

export default defineConfig({
  plugins: [svelte()],
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: { outDir: "dist", emptyOutDir: true, target: "es2021" },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
