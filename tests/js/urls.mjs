// The route URLs as the page reads them from its data-url-* attributes (templates/index.html),
// shared by the JavaScript test suites. RUN_ID is the placeholder a run's id replaces.

export const URLS = {
  stream: '/stream',
  runs: '/runs',
  runStream: '/runs/RUN_ID/stream',
  runStop: '/runs/RUN_ID/stop',
  placeholder: 'RUN_ID',
};
