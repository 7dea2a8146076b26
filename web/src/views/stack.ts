/**
 * The token stack: the grid's 32 levels x T frames as a heatmap over time, with a toggle and a solo button per
 * level. Clicking a row's number turns that level's term on or off; "S" keeps only that level.
 *
 * Used by `ui/levels.ts`, which owns the selection (`levels.ts`) and re-decodes when it changes; draws the grid held in
 * `grid.ts`. Rows of levels that are off are dimmed; during playback a playhead marks the time.
 */

import type { TokenGrid } from '../grid';
import { LevelSelection } from '../levels';
import { viridis } from './colormap';

const ROW_HEIGHT = 14;

export class StackView {
  private readonly root: HTMLElement;
  private readonly canvas: HTMLCanvasElement;
  private readonly overlay: HTMLCanvasElement;
  private readonly tooltip: HTMLElement;
  private readonly axis: HTMLElement;
  private readonly rows: { toggle: HTMLButtonElement; solo: HTMLButtonElement }[] = [];
  private grid: TokenGrid | null = null;
  private selection: LevelSelection;
  private image: HTMLCanvasElement | null = null;
  private playhead: number | null = null;
  /** Frames shown: all of them, or the last `window` frames while streaming live. */
  private visible: { start: number; count: number } = { start: 0, count: 0 };

  constructor(root: HTMLElement, private readonly numLevels: number, private readonly onChange: (s: LevelSelection) => void) {
    this.root = root;
    this.selection = LevelSelection.all(numLevels);
    root.classList.add('stack-view');
    root.replaceChildren();
    const labels = element('div', 'stack-labels');
    for (let level = 0; level < numLevels; level++) {
      const row = element('div', 'stack-row');
      const solo = element('button', 'solo') as HTMLButtonElement;
      solo.textContent = 'S';
      solo.title = `solo: only level ${level}`;
      solo.dataset.level = String(level);
      solo.addEventListener('click', () => this.onChange(new LevelSelection(numLevels, [level])));
      const toggle = element('button', 'level') as HTMLButtonElement;
      toggle.textContent = level === 0 ? '0 sem' : String(level);
      toggle.title = level === 0 ? 'level 0: semantic (click to turn on/off)' : `level ${level}: acoustic (click to turn on/off)`;
      toggle.dataset.level = String(level);
      toggle.addEventListener('click', (event) => {
        this.onChange(event.altKey || event.metaKey ? new LevelSelection(numLevels, [level]) : this.selection.toggled(level));
      });
      row.append(solo, toggle);
      labels.append(row);
      this.rows.push({ toggle, solo });
    }
    const plot = element('div', 'stack-plot');
    this.canvas = element('canvas', 'stack-canvas') as HTMLCanvasElement;
    this.overlay = element('canvas', 'stack-overlay') as HTMLCanvasElement;
    this.tooltip = element('div', 'stack-tooltip');
    this.tooltip.hidden = true;
    this.axis = element('div', 'stack-axis');
    const empty = element('div', 'stack-empty');
    empty.textContent = 'Open a file, record, or go live: the tokens appear here.';
    plot.append(this.canvas, this.overlay, this.tooltip, empty);
    root.append(labels, plot, element('div', 'stack-axis-spacer'), this.axis);
    this.overlay.addEventListener('mousemove', (event) => this.hover(event));
    this.overlay.addEventListener('mouseleave', () => (this.tooltip.hidden = true));
    new ResizeObserver(() => this.draw()).observe(plot);
    this.setSelection(this.selection);
  }

  setGrid(grid: TokenGrid | null, window?: number): void {
    this.grid = grid;
    this.root.classList.toggle('has-grid', !!grid && grid.numFrames > 0);
    if (grid) {
      // Live mode shows a fixed window that ends at the newest frame (frames before the start are blank).
      const count = window ?? grid.numFrames;
      this.visible = { start: grid.numFrames - count, count };
      this.image = render(grid, this.visible.start, this.visible.count);
    } else {
      this.image = null;
    }
    this.draw();
  }

  setSelection(selection: LevelSelection): void {
    this.selection = selection;
    this.rows.forEach(({ toggle, solo }, level) => {
      const on = selection.has(level);
      toggle.setAttribute('aria-pressed', String(on));
      toggle.classList.toggle('on', on);
      solo.classList.toggle('on', on && selection.size === 1);
    });
    this.draw();
  }

  setPlayhead(seconds: number | null): void {
    this.playhead = seconds;
    this.drawOverlay();
  }

  private draw(): void {
    const plot = this.canvas.parentElement as HTMLElement;
    const width = Math.max(100, plot.clientWidth);
    const height = this.numLevels * ROW_HEIGHT;
    const ratio = window.devicePixelRatio || 1;
    for (const canvas of [this.canvas, this.overlay]) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
    }
    const context = this.canvas.getContext('2d') as CanvasRenderingContext2D;
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.fillStyle = '#10131a';
    context.fillRect(0, 0, width, height);
    if (this.image && this.grid) {
      context.imageSmoothingEnabled = false;
      context.drawImage(this.image, 0, 0, width, height);
      for (let level = 0; level < this.numLevels; level++) {
        if (this.selection.has(level)) continue;
        context.fillStyle = 'rgba(12, 14, 20, 0.78)';
        context.fillRect(0, level * ROW_HEIGHT, width, ROW_HEIGHT);
      }
      const filled = Math.max(0, -this.visible.start / this.visible.count) * width; // live window still filling
      context.fillStyle = 'rgba(255,255,255,0.35)';
      context.fillRect(filled, ROW_HEIGHT - 0.5, width - filled, 1); // semantic | acoustic boundary
    }
    this.drawAxis(width);
    this.drawOverlay();
  }

  private drawAxis(width: number): void {
    this.axis.replaceChildren();
    if (!this.grid || this.visible.count === 0) return;
    const seconds = this.visible.count / this.grid.frameRate;
    const start = this.visible.start / this.grid.frameRate; // negative while a live window is still filling
    const step = niceStep(seconds / Math.max(1, width / 90));
    for (let t = Math.max(0, Math.ceil(start / step) * step); t <= start + seconds + 1e-9; t += step) {
      const tick = element('span', 'tick');
      tick.style.left = `${((t - start) / seconds) * 100}%`;
      tick.textContent = `${Number(t.toFixed(2))} s`;
      this.axis.append(tick);
    }
  }

  private drawOverlay(): void {
    const context = this.overlay.getContext('2d') as CanvasRenderingContext2D;
    const ratio = window.devicePixelRatio || 1;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.clearRect(0, 0, this.overlay.width, this.overlay.height);
    if (this.playhead === null || !this.grid || this.visible.count === 0) return;
    const x = ((this.playhead * this.grid.frameRate - this.visible.start) / this.visible.count) * this.overlay.width;
    context.fillStyle = '#ffffff';
    context.fillRect(Math.round(x), 0, Math.max(1, ratio), this.overlay.height);
  }

  private hover(event: MouseEvent): void {
    if (!this.grid || this.visible.count === 0) return;
    const box = this.overlay.getBoundingClientRect();
    const frame = this.visible.start + Math.floor(((event.clientX - box.left) / box.width) * this.visible.count);
    const level = Math.floor((event.clientY - box.top) / ROW_HEIGHT);
    if (frame < 0 || frame >= this.grid.numFrames || level < 0 || level >= this.numLevels) return;
    const present = this.grid.levelsPresent.includes(level);
    const token = present ? this.grid.codes[level * this.grid.numFrames + frame] : null;
    this.tooltip.textContent = `level ${level}${level === 0 ? ' (semantic)' : ''} · frame ${frame} · ${(frame / this.grid.frameRate).toFixed(2)} s · `
      + (token === null ? 'not in file' : `token ${token}`) + (this.selection.has(level) ? '' : ' · off');
    this.tooltip.hidden = false;
    this.tooltip.style.left = `${Math.min(box.width - 260, Math.max(0, event.clientX - box.left + 12))}px`;
    this.tooltip.style.top = `${Math.max(0, event.clientY - box.top - 28)}px`;
  }
}

/** One pixel per (frame, level): colour = token / codebook size; levels absent from the file are grey. */
function render(grid: TokenGrid, start: number, count: number): HTMLCanvasElement {
  const width = Math.max(count, 1);
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = grid.numLevels;
  const context = canvas.getContext('2d') as CanvasRenderingContext2D;
  const image = context.createImageData(width, grid.numLevels);
  const scale = 255 / Math.max(1, grid.codebookSize - 1);
  for (let level = 0; level < grid.numLevels; level++) {
    const present = grid.levelsPresent.includes(level);
    for (let t = 0; t < count; t++) {
      const pixel = 4 * (level * width + t);
      if (start + t < 0) {
        image.data[pixel] = 16, image.data[pixel + 1] = 19, image.data[pixel + 2] = 26;
      } else if (present) {
        const index = 3 * Math.round(grid.codes[level * grid.numFrames + start + t] * scale);
        image.data[pixel] = viridis[index];
        image.data[pixel + 1] = viridis[index + 1];
        image.data[pixel + 2] = viridis[index + 2];
      } else {
        image.data[pixel] = image.data[pixel + 1] = image.data[pixel + 2] = 60;
      }
      image.data[pixel + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-3)));
  for (const factor of [1, 2, 5, 10]) if (factor * power >= raw) return factor * power;
  return 10 * power;
}

export function element(tag: string, className: string): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  return node;
}
