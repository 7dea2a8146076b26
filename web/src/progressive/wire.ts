/** The progressive panel's buttons: its code (`progressive/panel.ts`) is a chunk of its own, loaded on first use. */

import { $ } from '../ui/dom';
import { guard } from '../ui/feedback';

export function wireProgressive(): void {
  const panel = () => import('./panel');
  $('receive-start').addEventListener('click', guard(async () => (await panel()).toggleReceive()));
  $('send-start').addEventListener('click', guard(async () => (await panel()).toggleSend()));
}
