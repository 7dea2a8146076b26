/** What the progressive panel (`progressive/panel.ts`, loaded on first use) received and sent, for the test hooks
 * (`testing/hooks.ts`): the panel installs `snapshot`; the hooks call it. */

export const progressiveResults: { snapshot: ((withArrays: boolean) => unknown) | null } = { snapshot: null };
