from passpost.cli import main

main()
