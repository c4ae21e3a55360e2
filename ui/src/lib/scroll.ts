// Scroll pinning: stay at the newest message while the user is at the
// bottom; once they scroll up, new messages must not move them — they are
// counted for a "N new ↓" button instead.

export const PIN_SLACK_PX = 48;

export function atBottom(scrollTop: number, clientHeight: number, scrollHeight: number): boolean {
  return scrollHeight - (scrollTop + clientHeight) <= PIN_SLACK_PX;
}

export type PinState = { pinned: boolean; unseen: number };

/** The user scrolled: re-evaluate pinning; reaching the bottom clears the count. */
export function onScroll(state: PinState, bottom: boolean): PinState {
  return bottom ? { pinned: true, unseen: 0 } : { pinned: false, unseen: state.unseen };
}

/** Messages arrived: follow them if pinned, else count them (own messages always jump down). */
export function onArrival(state: PinState, count: number, own: boolean): { state: PinState; scrollToBottom: boolean } {
  if (state.pinned || own) return { state: { pinned: true, unseen: 0 }, scrollToBottom: true };
  return { state: { pinned: false, unseen: state.unseen + count }, scrollToBottom: false };
}
