// A form sent back with errors: put the cursor in the first field that needs fixing
// (Django marks it aria-invalid), not in the autofocused first field.
const invalid = document.querySelector('main [aria-invalid="true"]');
if (invalid) invalid.focus();
